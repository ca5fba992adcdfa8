"""The audit page (/console/audit, admin and auditor): search the trail (kind, actor, text, date range) newest
first with paging, the chain's status as `tollhouse audit verify` reports it (intact with its count, or where it
breaks), and the matching entries as a JSON Lines or CEF download for a SIEM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from functools import partial
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from tollhouse.audit.checkpoint import public_key_path, signing_key_path
from tollhouse.audit.export import cef, jsonl
from tollhouse.audit.verify import ChainStatus, verify_trail
from tollhouse.console import dates
from tollhouse.console.forms import fragment
from tollhouse.console.pages import AUDIT, Page
from tollhouse.console.render import PAGE_HEADERS, error_page, render
from tollhouse.events.audit_search import AuditQuery, audit_kinds, search_audit
from tollhouse.events.store import StoreError, open_store
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState

PATH = "/console/audit"
PAGE_SIZE = 100
EXPORT_PAGE = 10_000
FORMATS = {"jsonl": (jsonl, "application/x-ndjson", "jsonl"), "cef": (cef, "text/plain", "cef")}


@dataclass(frozen=True, slots=True)
class Search:
    kind: str
    actor: str
    text: str
    since: str
    until: str
    before: int | None

    @classmethod
    def of(cls, query: dict[str, str]) -> Search:
        before = query.get("before", "")
        return cls(query.get("kind", "").strip(), query.get("actor", "").strip(), query.get("q", "").strip(),
                   query.get("from", "").strip(), query.get("to", "").strip(),
                   int(before) if before.isdigit() and len(before) <= 18 else None)

    def problems(self) -> list[str]:
        return dates.problems(**{"from": self.since, "to": self.until})

    def query(self, zone: ZoneInfo, before: int | None = None) -> AuditQuery:
        lo, hi = dates.bounds_ms(self.since, self.until, zone)
        return AuditQuery(self.kind, self.actor, self.text, lo, hi, before)

    def link(self, **extra: str) -> str:
        fields = {"kind": self.kind, "actor": self.actor, "q": self.text, "from": self.since, "to": self.until,
                  **extra}
        return urlencode({k: v for k, v in fields.items() if v})


def _zone(state: GatewayState) -> ZoneInfo:
    return ZoneInfo(state.settings.ledger.timezone)


async def audit_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    search = Search.of(request.query)
    problems = search.problems()
    await state.audit.flush()
    entries = [] if problems else await state.runner.run(
        lambda s: search_audit(s, search.query(_zone(state), search.before), PAGE_SIZE + 1))
    kinds = await state.runner.run(audit_kinds)
    more = len(entries) > PAGE_SIZE
    entries = entries[:PAGE_SIZE]
    return render(request, state, user, "audit.html", "Audit trail", search=search, problems=problems,
                  entries=entries, kinds=kinds,
                  older=search.link(before=str(entries[-1].seq)) if more and entries else None,
                  newest=search.link() if search.before else None, export=search.link())


async def _chain_status(state: GatewayState) -> ChainStatus:
    settings = state.settings
    key = public_key_path(signing_key_path(state.data_dir, settings.audit.signing_key_file))
    await state.audit.flush()

    def run() -> ChainStatus:
        store = open_store(settings.store.url, state.data_dir)
        try:
            return verify_trail(store, key)
        finally:
            store.close()

    return await asyncio.to_thread(run)  # its own connection: hashing a long trail blocks no one


async def chain(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    """The chain's status (htmx loads it into the audit page; a long trail takes a moment to hash)."""
    try:
        status = await _chain_status(state)
    except StoreError as exc:
        return fragment(state, "audit_chain.html", chain=None, error=f"the trail cannot be read right now: {exc}")
    return fragment(state, "audit_chain.html", chain=status, error="")


async def export(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    """The entries matching the search, oldest first, one per line (JSON Lines or CEF)."""
    name = request.query.get("format", "jsonl")
    if name not in FORMATS:
        return error_page(request, state, user, 400, f"format {name!r} is not one of {', '.join(FORMATS)}.")
    search = Search.of(request.query)
    if search.problems():
        return error_page(request, state, user, 400, "; ".join(search.problems()))
    line, kind, suffix = FORMATS[name]
    await state.audit.flush()
    base = search.query(_zone(state))
    lines: list[str] = []
    after = 0
    while True:
        page = await state.runner.run(partial(search_audit, q=replace(base, after_seq=after), limit=EXPORT_PAGE))
        lines += [line(e) for e in page]
        if len(page) < EXPORT_PAGE:
            break
        after = page[-1].seq
    body = "".join(f"{text}\n" for text in lines).encode()
    return Response(200, body, [("content-type", f"{kind}; charset=utf-8"),
                                ("content-disposition", f'attachment; filename="tollhouse-audit.{suffix}"'),
                                *PAGE_HEADERS])


PAGES = (
    Page("GET", PATH, audit_page, AUDIT, "Audit"),
    Page("GET", f"{PATH}/chain", chain, AUDIT),
    Page("GET", f"{PATH}/export", export, AUDIT),
)
