"""The audit trail counts identical decisions into one entry and keeps every other one apart."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from edge.access.audit import AuditTrail, PendingDecision
from edge.store.access_records import parse_app_spec, parse_idp
from edge.store.sqlite import SqliteStore

from .conftest import WALL_START, grafana_app, oidc_idp


@pytest.fixture
async def trail(
    store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> AsyncIterator[AuditTrail]:
    store.create_idp(parse_idp(oidc_idp()))
    store.create_app(parse_app_spec(grafana_app()))
    audit = AuditTrail(store, queue_size=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(audit.run)
        yield audit
        nursery.cancel_scope.cancel()


def decision(
    at: float,
    *,
    path: str = "/dashboards",
    email: str | None = "alice@example.com",
    action: str = "allow",
    client_ip: str = "203.0.113.9",
    request_id: str = "r1",
) -> PendingDecision:
    return PendingDecision(
        WALL_START + at,
        "grafana",
        client_ip,
        action,
        "allowed_by_policy" if action == "allow" else "no_policy_matched",
        "engineers" if action == "allow" else None,
        email,
        None,
        {"host": "grafana.example.com", "path": path, "request_id": request_id},
    )


def stored(store: SqliteStore) -> list[dict[str, Any]]:
    events = store.audit_events(100, app="grafana")
    return [e.detail for e in reversed(events) if e.kind == "access.decision"]


async def test_identical_decisions_in_one_interval_share_an_entry_with_their_count(
    trail: AuditTrail, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunnelgate.audit")
    for n in range(500):
        trail.record(decision(n * 0.001, request_id=f"r{n}"))
    await trail.drained()
    rows = stored(store)
    assert len(rows) == 1
    assert rows[0]["count"] == 500
    assert rows[0]["email"] == "alice@example.com"
    assert rows[0]["last_time"].startswith("2030-01-02T03:04:05.499")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tunnelgate.audit"]
    assert len(lines) == 1
    assert lines[0]["count"] == 500
    assert lines[0]["request_id"] == "r0"  # the first request of the run
    assert lines[0]["path"] == "/dashboards"


async def test_decisions_that_differ_in_anything_an_auditor_reads_stay_apart(
    trail: AuditTrail, store: SqliteStore
) -> None:
    trail.record(decision(0.0))
    trail.record(decision(0.001, path="/admin"))
    trail.record(decision(0.002, email="bob@example.com"))
    trail.record(decision(0.003, action="deny"))
    trail.record(decision(0.004))
    await trail.drained()
    rows = stored(store)
    assert [(r["email"], r["action"], r.get("count", 1)) for r in rows] == [
        ("alice@example.com", "allow", 2),
        ("alice@example.com", "allow", 1),
        ("bob@example.com", "allow", 1),
        ("alice@example.com", "deny", 1),
    ]
    # A decision made once looks exactly as it always did: no count, no last time.
    assert "count" not in rows[1]
    assert "last_time" not in rows[1]


async def test_a_later_interval_starts_a_new_entry(trail: AuditTrail, store: SqliteStore) -> None:
    trail.record(decision(0.0))
    trail.record(decision(0.1))
    await trail.drained()  # the interval's table is written: the next decision starts anew
    trail.record(decision(5.0))
    await trail.drained()
    assert [r.get("count", 1) for r in stored(store)] == [2, 1]


async def test_a_full_table_drops_new_kinds_of_decision_but_still_counts_repeats(
    trail: AuditTrail, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(6):  # queue_size is 4 distinct entries
        trail.record(decision(n * 0.001, path=f"/p{n}"))
    trail.record(decision(0.01, path="/p0"))
    assert trail.dropped == 2
    assert "audit queue full" in caplog.text
    await trail.drained()
    rows = stored(store)
    assert [r.get("count", 1) for r in rows] == [2, 1, 1, 1]


async def test_a_failing_store_is_logged_and_the_trail_goes_on(
    trail: AuditTrail, store: SqliteStore, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = store.record_decisions

    def broken(records: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "record_decisions", broken)
    trail.record(decision(0.0))
    await trail.drained()
    assert "could not store 1 audit decisions" in caplog.text
    monkeypatch.setattr(store, "record_decisions", real)
    trail.record(decision(1.0, path="/after"))
    await trail.drained()
    assert [r["action"] for r in stored(store)] == ["allow"]


def test_the_table_size_must_be_positive(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="queue_size"):
        AuditTrail(store, queue_size=0)
