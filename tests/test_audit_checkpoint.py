"""Signed audit checkpoints: the signing key on disk, and checks that catch a forged checkpoint, a rewritten
chain and a removed tail (which the hash chain alone cannot see)."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import ALLOWLIST, DIRECTORY
from tollhouse.audit.chain import GENESIS, AuditEntry, canonical, entry_hash, first_problem
from tollhouse.audit.checkpoint import (
    KEY_FILE,
    PUBLIC_KEY_FILE,
    SigningKeyError,
    key_id,
    load_or_create_signing_key,
    load_public_key,
    sign_checkpoint,
    verify_checkpoints,
)
from tollhouse.events.records import Checkpoint
from tollhouse.events.store import open_store

KEY = Ed25519PrivateKey.generate()
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def chain(n: int, actor: str = "gateway") -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        data = {"n": seq}
        digest = entry_hash(prev, canonical(seq, T0 + seq, "call.blocked", actor, data))
        out.append(AuditEntry(seq, T0 + seq, "call.blocked", actor, data, prev, digest))
        prev = digest
    return out


def cp(entries: list[AuditEntry], seq: int, key: Ed25519PrivateKey = KEY) -> Checkpoint:
    return sign_checkpoint(key, seq, entries[seq - 1].hash, T0 + 1000 * seq)


FIVE = chain(5)
OTHER_KEY = Ed25519PrivateKey.generate()


@pytest.mark.parametrize(("entries", "checkpoints", "expected"), [
    (FIVE, [], None),
    (FIVE, [cp(FIVE, 2), cp(FIVE, 5)], None),
    ([], [], None),
    (FIVE[:3], [cp(FIVE, 2), cp(FIVE, 5)],
     "entries after #3 were removed: checkpoint signed at 2023-11-14T22:13:25.000Z covers #5"),
    ([], [cp(FIVE, 1)], "every entry was removed: checkpoint signed at 2023-11-14T22:13:21.000Z covers #1"),
    (FIVE, [replace(cp(FIVE, 5), hash=FIVE[3].hash)], "the signature does not verify: forged or edited"),
    (FIVE, [replace(cp(FIVE, 5), seq=4)], "for #4: the signature does not verify"),
    (FIVE, [replace(cp(FIVE, 5), ts_ms=T0)], "the signature does not verify"),
    (FIVE, [replace(cp(FIVE, 5), signature="00" * 64)], "the signature does not verify"),
    (FIVE, [replace(cp(FIVE, 5), signature="not hex")], "the signature does not verify"),
    (FIVE, [cp(FIVE, 5, OTHER_KEY)],
     f"the signature does not verify (it names key {key_id(OTHER_KEY.public_key())}; this key is "
     f"{key_id(KEY.public_key())}): forged or edited"),
    (chain(5, actor="mallory"), [cp(FIVE, 3)],  # a whole new, internally valid chain
     "entry #3 does not match the checkpoint signed at 2023-11-14T22:13:23.000Z (hash "),
    ([FIVE[0], *FIVE[2:]], [cp(FIVE, 2), cp(FIVE, 5)],
     "entry #2 is missing: checkpoint signed at 2023-11-14T22:13:22.000Z covers it"),
    (FIVE[:3], [cp(FIVE, 5), replace(cp(FIVE, 1), signature="00" * 64)],  # the first problem in seq order
     "checkpoint signed at 2023-11-14T22:13:21.000Z for #1: the signature does not verify"),
])
def test_verify_checkpoints(entries: list[AuditEntry], checkpoints: list[Checkpoint], expected: str | None) -> None:
    problem = verify_checkpoints(entries, checkpoints, KEY.public_key())
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem, problem


def test_a_removed_tail_passes_the_chain_check_but_not_the_checkpoints() -> None:
    assert first_problem(FIVE[:3]) is None
    assert verify_checkpoints(FIVE[:3], [cp(FIVE, 5)], KEY.public_key()) is not None


def test_the_signing_key_is_made_once_private_with_its_public_half_exported(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / PUBLIC_KEY_FILE).stat().st_mode) == 0o644
    again = load_or_create_signing_key(tmp_path)
    assert key_id(again.public_key()) == key_id(key.public_key())
    public = load_public_key(tmp_path / PUBLIC_KEY_FILE)
    assert key_id(public) == key_id(key.public_key())
    assert verify_checkpoints(FIVE, [cp(FIVE, 5, key)], public) is None
    (tmp_path / PUBLIC_KEY_FILE).unlink()
    load_or_create_signing_key(tmp_path)  # a lost public key is exported again
    assert key_id(load_public_key(tmp_path / PUBLIC_KEY_FILE)) == key_id(key.public_key())


def test_concurrent_starters_agree_on_one_key(tmp_path: Path) -> None:
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(key_id(load_or_create_signing_key(tmp_path).public_key())))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("name", "content", "message"), [
    (KEY_FILE, b"garbage", "cannot read the audit signing key"),
    (PUBLIC_KEY_FILE, b"garbage", "cannot read the audit public key"),
])
def test_unreadable_keys_are_named(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SigningKeyError, match=message):
        if name == KEY_FILE:
            load_or_create_signing_key(tmp_path)
        else:
            load_public_key(tmp_path / name)


# -- wired: the gateway checkpoints, `tollhouse audit verify` checks --------------------------------


def _verify(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", "audit", "verify", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60)


def _run_gateway(tmp_path: Path, mock: Mock, blocked: int) -> Path:
    data = tmp_path / "data"
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST]}, "audit": {"checkpoint_every": 2}},
                 data).start()
    for _ in range(blocked):
        with pytest.raises(openai.PermissionDeniedError):
            oai(gw).chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
    gw.stop()
    return data


def test_the_gateway_checkpoints_and_verify_catches_a_removed_tail(mock: Mock, tmp_path: Path) -> None:
    data = _run_gateway(tmp_path, mock, blocked=2)  # 5 entries: directory and policy version 1, started, 2 blocked
    store = open_store("", data)
    seqs = [c.seq for c in store.checkpoints()]
    store.close()
    assert seqs == [2, 4, 5]  # every 2 entries, and at shutdown
    ok = _verify(data)
    assert ok.returncode == 0, ok.stderr
    assert "3 signed checkpoints verified (the last covers #5)" in ok.stdout

    db = sqlite3.connect(data / "tollhouse.db")
    db.execute("DELETE FROM audit WHERE seq >= 4")
    db.commit()
    db.close()
    cut = _verify(data)
    assert cut.returncode == 1 and "Traceback" not in cut.stderr
    assert "audit trail TAMPERED: entries after #3 were removed: checkpoint signed at " in cut.stderr
    assert "covers #4" in cut.stderr


def test_verify_with_a_foreign_or_missing_public_key(mock: Mock, tmp_path: Path) -> None:
    data = _run_gateway(tmp_path, mock, blocked=1)
    other = tmp_path / "other"
    other.mkdir()
    load_or_create_signing_key(other)
    wrong = _verify(data, "--public-key", str(other / PUBLIC_KEY_FILE))
    assert wrong.returncode == 1 and "the signature does not verify (it names key" in wrong.stderr
    (data / PUBLIC_KEY_FILE).unlink()
    missing = _verify(data)
    assert missing.returncode == 1 and "signed checkpoints, but cannot read the audit public key" in missing.stderr
