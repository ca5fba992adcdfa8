-- A store at schema version 3, as Tollhouse 0.1.0 before PostgreSQL support wrote it (sqlite3 .dump).
BEGIN TRANSACTION;
CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
INSERT INTO "audit" VALUES(1,1767225600000,'gateway.started','gateway','{"version":"0.1.0"}','0000000000000000000000000000000000000000000000000000000000000000','997daaecc8491d086555181048d61c1eb080dac77c5e4988f8f49ac84c87881c');
INSERT INTO "audit" VALUES(2,1767225780000,'call.blocked','alice','{"rule_id":"r1","model":"gpt-4o"}','997daaecc8491d086555181048d61c1eb080dac77c5e4988f8f49ac84c87881c','07db3fe31aea78f64ede3fc70472db1b03999252323f9a95d90ff38b9ddc3a54');
CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT UNIQUE NOT NULL, ts_ms , subject , subject_kind , team , project , cost_centre , provider , endpoint , path , metered , model , requested_model , stream , status , input_tokens , output_tokens , cache_read_tokens , cache_write_tokens , cost_nusd , usage_source , decision , rule_id , would , latency_ms , ttfb_ms , client_disconnected , error 
    );
INSERT INTO "events" VALUES(1,'v3-1',1767225660000,'alice','employee','platform',NULL,NULL,'openai','chat','/v1/chat/completions',1,'gpt-4o','gpt-4o',0,200,101,11,0,0,100000000,'response','allow',NULL,NULL,12.5,NULL,0,NULL);
INSERT INTO "events" VALUES(2,'v3-2',1767225720000,'bob','employee','platform',NULL,NULL,'openai','chat','/v1/chat/completions',1,'gpt-4o','gpt-4o',1,200,102,12,0,0,100000000,'response','allow',NULL,NULL,12.5,NULL,0,NULL);
INSERT INTO "events" VALUES(3,'v3-3',1767225780000,'alice','employee','platform',NULL,NULL,'openai','chat','/v1/chat/completions',1,'gpt-4o','gpt-4o',0,403,103,13,0,0,NULL,'response','block','r1',NULL,12.5,NULL,0,NULL);
CREATE TABLE gateway_keys (
        key_hash TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        subject TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
INSERT INTO "gateway_keys" VALUES('hash-alice','th-abcdefg','alice','laptop',1767225600000,NULL);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO "schema_version" VALUES(3);
CREATE INDEX events_ts ON events (ts_ms);
CREATE INDEX events_subject_ts ON events (subject, ts_ms);
CREATE INDEX events_team_ts ON events (team, ts_ms);
CREATE INDEX events_project_ts ON events (project, ts_ms);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('events',3);
COMMIT;
