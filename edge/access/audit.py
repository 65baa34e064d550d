"""The audit trail: every access decision, in the store and as a JSON log line.

The request path only counts a :class:`PendingDecision` of plain values into a table; a
background task formats the ``tunnelgate.audit`` log lines and writes the store in batches (one
transaction each), so neither log formatting nor SQLite is ever on a request's way.

Identical decisions are counted, not repeated. Decisions that agree on everything but their
time and request id (app, person or service token, client address, action, policy, reason,
host and path) within one flush interval (``flush_interval``, 250 ms) become one entry with
``count`` and ``last_time``, and one log line that names the first request's id. A browser
fetching one page decides a few dozen times a second, a load test thousands of times: one
row and one line per decision was most of the edge's CPU for an authenticated request (the
store's thread, the log handler's write per line), and nothing an auditor reads is lost: who,
from where, what, why, when and how often. Decisions that differ in any of those keep their
own entries.

The table is bounded (``queue_size`` distinct entries per interval): when the store falls
behind, new kinds of decision are dropped and counted, and a warning says how many, rather
than letting memory grow or requests wait. Repeats of an entry already in the table are
always counted.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import NamedTuple, NoReturn

import trio

from edge.store import Store
from edge.store.access_records import DecisionRecord

__all__ = ["AuditTrail", "DecisionKey", "PendingDecision", "decision_key"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("tunnelgate.audit")

DEFAULT_FLUSH_INTERVAL = 0.25


class PendingDecision(NamedTuple):
    """A decision as the request path hands it over: plain values, no formatting yet."""

    time: float
    app: str
    client_ip: str
    action: str
    reason: str
    policy: str | None
    email: str | None
    service_token: str | None
    context: dict[str, str]

    def record(self, count: int = 1, last_time: float | None = None) -> DecisionRecord:
        return DecisionRecord(
            time=datetime.fromtimestamp(self.time, tz=UTC),
            app=self.app,
            client_ip=self.client_ip,
            action=self.action,
            reason=self.reason,
            policy=self.policy,
            email=self.email,
            service_token=self.service_token,
            count=count,
            last_time=(
                datetime.fromtimestamp(last_time, tz=UTC) if last_time is not None else None
            ),
        )


class _Entry:
    """The first of a run of identical decisions, how many there were, and the last one's time."""

    __slots__ = ("count", "first", "last_time")

    def __init__(self, first: PendingDecision) -> None:
        self.first = first
        self.count = 1
        self.last_time = first.time


DecisionKey = tuple[str, str, str, str, str | None, str | None, str | None, str | None,
                    str | None]
"""What identical decisions agree on: app, client address, action, reason, policy, e-mail,
service token, host and path."""


def decision_key(decision: PendingDecision) -> DecisionKey:
    context = decision.context
    return (decision.app, decision.client_ip, decision.action, decision.reason,
            decision.policy, decision.email, decision.service_token, context.get("host"),
            context.get("path"))


class AuditTrail:
    """Every access decision, to the store and as a JSON line on ``tunnelgate.audit``.

    The request path only counts; the background task (``run``) formats the log lines and
    writes the store once per interval, so neither is ever on a request's way.
    """

    def __init__(self, store: Store, *, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError("AuditTrail queue_size must be positive")
        self._store = store
        self._capacity = queue_size
        self._pending: dict[DecisionKey, _Entry] = {}
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self.dropped = 0

    def count_again(self, key: DecisionKey, now: float) -> bool:
        """Count a repeat of a decision already in the table (True); False when it is new and
        must be ``record``ed. Spares the request path building a decision it only counts."""
        entry = self._pending.get(key)
        if entry is None:
            return False
        entry.count += 1
        entry.last_time = now
        return True

    def record(self, decision: PendingDecision, key: DecisionKey | None = None) -> None:
        """Count one decision in (``key``: its ``decision_key``, if already made); never waits."""
        if key is None:
            key = decision_key(decision)
        entry = self._pending.get(key)
        if entry is not None:
            entry.count += 1
            entry.last_time = decision.time
            return
        if len(self._pending) >= self._capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit queue full; %d decisions not recorded", self.dropped)
            return
        if not self._pending:
            self._wake.set()
            if self._drained.is_set():
                self._drained = trio.Event()
        self._pending[key] = _Entry(decision)

    async def run(
        self, *, batch_size: int = 2000, flush_interval: float = DEFAULT_FLUSH_INTERVAL
    ) -> NoReturn:
        while True:
            await self._wake.wait()
            await trio.sleep(flush_interval)
            entries = list(self._pending.values())
            self._pending = {}
            self._wake = trio.Event()
            for start in range(0, len(entries), batch_size):
                await self._write(entries[start : start + batch_size])
            if not self._pending:
                self._drained.set()

    async def _write(self, entries: list[_Entry]) -> None:
        records = [
            entry.first.record(entry.count, entry.last_time if entry.count > 1 else None)
            for entry in entries
        ]
        if audit_log.isEnabledFor(logging.INFO):
            for record, entry in zip(records, entries, strict=True):
                line = {**record.detail(), "time": record.time.isoformat(),
                        **entry.first.context}
                audit_log.info("%s", json.dumps(line, separators=(",", ":")))
        try:
            await trio.to_thread.run_sync(self._store.record_decisions, records)
        except Exception:
            log.exception("could not store %d audit decisions", len(records))

    async def drained(self) -> None:
        """Until every decision recorded so far has been logged and written (or failed to)."""
        await self._drained.wait()
