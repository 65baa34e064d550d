"""The audit trail: every access decision, in the store and as a JSON log line.

The request path only queues a :class:`PendingDecision` of plain values; a background task
formats the ``tunnelgate.audit`` log lines and writes the store in batches (one transaction
each), so neither log formatting nor SQLite is ever on a request's way. After the first
decision of a batch it waits a short interval (``flush_interval``, 50 ms) for more: a hop to
the store's thread costs about as much as the rows it writes, and under load one batch per
interval instead of one per scheduling round took the audit's share of the edge's CPU from
about a third to a few percent. The queue is bounded:
when the store falls behind, new decisions are dropped and counted, and a warning says how
many, rather than letting memory grow or requests wait.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import NamedTuple, NoReturn

import trio

from edge.store import Store
from edge.store.access_records import DecisionRecord

__all__ = ["AuditTrail", "PendingDecision"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("tunnelgate.audit")


class PendingDecision(NamedTuple):
    """A decision as the request path queues it: plain values, no formatting yet."""

    time: float
    app: str
    client_ip: str
    action: str
    reason: str
    policy: str | None
    email: str | None
    service_token: str | None
    context: dict[str, str]

    def record(self) -> DecisionRecord:
        return DecisionRecord(
            time=datetime.fromtimestamp(self.time, tz=UTC),
            app=self.app,
            client_ip=self.client_ip,
            action=self.action,
            reason=self.reason,
            policy=self.policy,
            email=self.email,
            service_token=self.service_token,
        )


class AuditTrail:
    """Every access decision, to the store and as a JSON line on ``tunnelgate.audit``.

    The request path only queues; the background task formats the log lines and writes the
    store in batches, so neither log formatting nor SQLite is ever on a request's way.
    """

    def __init__(self, store: Store, *, queue_size: int) -> None:
        self._store = store
        self._send, self._receive = trio.open_memory_channel[PendingDecision](queue_size)
        self._unwritten = 0
        self._drained = trio.Event()
        self._drained.set()
        self.dropped = 0

    def record(self, decision: PendingDecision) -> None:
        """Queue one decision; never waits."""
        try:
            self._send.send_nowait(decision)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit queue full; %d decisions not recorded", self.dropped)
            return
        if self._unwritten == 0:
            self._drained = trio.Event()
        self._unwritten += 1

    async def run(self, *, batch_size: int = 2000, flush_interval: float = 0.05) -> NoReturn:
        while True:
            batch = [await self._receive.receive()]
            await trio.sleep(flush_interval)
            while len(batch) < batch_size:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            records = [pending.record() for pending in batch]
            if audit_log.isEnabledFor(logging.INFO):
                for record, pending in zip(records, batch, strict=True):
                    line = {**record.detail(), "time": record.time.isoformat(), **pending.context}
                    audit_log.info("%s", json.dumps(line, separators=(",", ":")))
            try:
                await trio.to_thread.run_sync(self._store.record_decisions, records)
            except Exception:
                log.exception("could not store %d audit decisions", len(batch))
            self._unwritten -= len(batch)
            if self._unwritten == 0:
                self._drained.set()

    async def drained(self) -> None:
        """Until every decision recorded so far has been logged and written (or failed to)."""
        await self._drained.wait()
