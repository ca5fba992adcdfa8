"""Alerts read from the audit trail (so none is missed whoever caused it, whichever gateway, however it restarted):

- exemption requests go to the policy owners; a decision goes to the requester when an address is known for them
  (the requester field is an address, or the directory gives the person's);
- an address locked out for guessing the admin token (`console.sign_in_locked`) goes to `alerts.security`, at
  most once per address and hour."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from tollhouse.alerts.model import Alert
from tollhouse.audit.chain import AuditEntry
from tollhouse.events.store import Store
from tollhouse.gateway.sign_in_guard import FAILED, LOCKED

WATERMARK = "alerts.audit_seq"
KINDS = ("exemption.requested", "exemption.approved", "exemption.denied", LOCKED)


@dataclass(frozen=True, slots=True)
class ExemptionNotice:
    alert: Alert
    to_owners: bool  # True: the policy owners; False: `requester_email`
    requester_email: str | None = None


def read_new(store: Store, limit: int = 500) -> tuple[list[AuditEntry], dict[str, str], int]:
    """Audit entries about exemptions after the watermark (first run: from now on), the requesters of the
    decided ones (exemption id -> requester) and the seq to store as the new watermark."""
    row = store.db.query("SELECT value FROM meta WHERE key = ?", (WATERMARK,))
    if not row:
        last = store.db.query("SELECT COALESCE(MAX(seq), 0) AS s FROM audit")[0]["s"]
        set_watermark(store, int(last))
        return [], {}, int(last)
    after = int(row[0]["value"])
    entries = store.audit_entries(after, limit)
    wanted = [e for e in entries if e.kind in KINDS]
    requesters: dict[str, str] = {}
    for e in wanted:
        if e.kind != "exemption.requested" and isinstance(e.data.get("id"), str):
            x = store.exemption(e.data["id"])
            if x is not None:
                requesters[x.id] = x.requester
    return wanted, requesters, entries[-1].seq if entries else after


def set_watermark(store: Store, seq: int) -> None:
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                     "excluded.value", ("alerts.audit_seq", str(seq)))


def notice(e: AuditEntry, requester: str | None, email_of: dict[str, str], console_url: str) -> ExemptionNotice | None:
    d = e.data
    xid = str(d.get("id"))
    link = (("Review", console_url + "exemptions/" + quote(xid, safe="")),)
    if e.kind == "exemption.requested":
        fields = tuple((k.replace("_", " ").capitalize(), str(d[k])) for k in
                       ("subject", "rule_id", "model", "provider", "team", "project", "requester") if d.get(k))
        text = (f"{d.get('requester') or d.get('subject')} asks to be let past rule {d.get('rule_id') or '-'}"
                f" for {d.get('model') or 'any model'}: \"{d.get('justification', '')}\". Approve or deny it in "
                "the console.")
        return ExemptionNotice(Alert(f"exemption:{xid}:requested", "exemption.requested", "info",
                                     f"Exemption requested by {d.get('subject')} ({xid})", text, fields, link), True)
    if requester is None:
        return None
    address = requester if "@" in requester else email_of.get(requester)
    if not address:
        return None
    verdict = "approved" if e.kind == "exemption.approved" else "denied"
    detail = (f" until {d.get('expires')}" if d.get("expires") else "") if verdict == "approved" else \
        f": {d.get('reason', '')}"
    text = f"Your exemption request {xid} for rule {d.get('rule_id') or '-'} was {verdict} by {e.actor}{detail}."
    fields = (("Rule", str(d.get("rule_id") or "-")), ("Decision", verdict), ("Reviewer", e.actor))
    return ExemptionNotice(Alert(f"exemption:{xid}:decided", "exemption.decided", "info",
                                 f"Exemption {xid} {verdict}", text, fields, link), False, address)


def lockout_alert(e: AuditEntry, console_url: str) -> Alert:
    """An address guessed the admin token wrongly too often (one alert per address and hour)."""
    d = e.data
    minutes = float(d.get("for_s", 0)) / 60
    text = (f"{d.get('failures')} wrong admin tokens came from {e.actor} within {minutes:g} minutes; it may not "
            "try the admin token again until that window has passed. If it was not one of your admins, someone is "
            "guessing the admin token: choose a long random one (admin_token) and look at the audit trail.")
    fields = (("Address", e.actor), ("Failures", str(d.get("failures"))), ("Window", f"{minutes:g} minutes"))
    link = (("Audit trail", console_url + "audit?kind=" + quote(FAILED)),)
    return Alert(f"security:sign_in_locked:{e.actor}:{e.ts_ms // 3_600_000}", "security", "warning",
                 f"Admin token guessed wrongly from {e.actor}", text, fields, link)

