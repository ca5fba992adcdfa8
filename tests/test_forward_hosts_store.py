"""forward_hosts (migration 11) on SQLite and PostgreSQL: a gateway's tallies add up, an agent's report replaces
its rows (a late, older one does not), and the listing sums per host."""

from __future__ import annotations

from tollhouse.events.store import Store
from tollhouse.forward.hosts import (
    HostBook,
    HostRow,
    list_hosts,
    own_hosts_since,
    prune_hosts,
    save_agent_hosts,
    save_hosts,
)


def test_tallies_add_reports_replace_and_hosts_sum(store: Store) -> None:
    book = HostBook()
    book.connection("api.mistral.ai", "alice", 1000)
    book.transferred("api.mistral.ai", "alice", 1500, 10, 200)
    book.connection("api.openai.com", "alice", 1200, intercepted=True)
    book.connection("evil.example", "bob", 1300, denied=True)
    save_hosts(store, book.take())
    assert len(book) == 0
    book.connection("api.mistral.ai", "alice", 5000)
    book.transferred("api.mistral.ai", "alice", 5000, 1, 2)
    save_hosts(store, book.take())
    report = HostRow("api.mistral.ai", "carol", 4, 0, 0, 40, 400, 100, 9000)
    save_agent_hosts(store, "laptop-1", [report])
    save_agent_hosts(store, "laptop-1", [report._replace(connections=1, last_ms=8000)])  # late and older: ignored
    hosts = {h["host"]: h for h in list_hosts(store)}
    mistral = hosts["api.mistral.ai"]
    assert (mistral["connections"], mistral["bytes_up"], mistral["bytes_down"]) == (2 + 4, 11 + 40, 202 + 400)
    assert (mistral["first_ms"], mistral["last_ms"]) == (100, 9000)
    assert mistral["people"] == ["alice", "carol"] and mistral["agents"] == 1
    assert hosts["evil.example"]["denied"] == 1 and hosts["api.openai.com"]["intercepted"] == 1
    assert [h["host"] for h in list_hosts(store)] == ["api.mistral.ai", "evil.example", "api.openai.com"]
    assert [h["host"] for h in list_hosts(store, since_ms=5000)] == ["api.mistral.ai"]
    # what an agent would report: its own rows only, seen since a time, oldest first
    own = own_hosts_since(store, 1200, 10)
    assert [(r.host, r.connections) for r in own] == [("api.openai.com", 1), ("evil.example", 1),
                                                      ("api.mistral.ai", 2)]


def test_a_failed_flush_is_put_back() -> None:
    book = HostBook()
    book.connection("a.example", "alice", 1000)
    taken = book.take()
    book.connection("a.example", "alice", 2000)
    book.restore(taken)
    (row,) = book.take()
    assert (row.connections, row.first_ms, row.last_ms) == (2, 1000, 2000)


def test_rows_not_seen_since_a_time_are_pruned(store: Store) -> None:
    save_hosts(store, [HostRow("old.example", "alice", 1, 0, 1, 0, 0, 1000, 2000),
                       HostRow("api.mistral.ai", "alice", 1, 0, 0, 5, 5, 1000, 9000)])
    save_agent_hosts(store, "laptop-1", [HostRow("old.example", "bob", 2, 0, 2, 0, 0, 1500, 2500)])
    assert prune_hosts(store, 5000) == 2  # the gateway's row and the agent's, both last seen before 5000
    assert [h["host"] for h in list_hosts(store)] == ["api.mistral.ai"]
    assert prune_hosts(store, 5000) == 0
