"""The store-change half of several edges on one PostgreSQL: hearing changes, and health.

Every administrative write commits a ``NOTIFY tunnelgate, '<kind>:<id>'`` with it
(:mod:`edge.store.postgres`). :class:`ChangeListener` keeps one extra connection that LISTENs,
waits on its socket from trio (``trio.lowlevel.wait_readable``: no thread parked on it), and
hands every batch of notices to the same hook the local admin API uses, so routes, tunnel
credentials and the Access catalog are rebuilt within moments of a change on any edge.
Notifications are not durable (a listener that was disconnected misses them), so each
(re)connection and every ``resync_interval`` triggers a full re-read as the safety net.

PostgreSQL unavailable: the edge keeps serving from what it holds; :class:`StoreHealth` says so
on ``/ready`` and as the ``tunnelgate_edge_store_up`` gauge; the listener reconnects with
backoff. The rest of the cluster (the live-connection registry, forwarding) is
:mod:`edge.cluster`.

Errors: this module raises none of its own; database failures are logged and retried, and the
edge keeps its last snapshots.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import trio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.admin.api import ChangeEvent, ChangeKind
from edge.store import StoreError
from edge.store.postgres import NOTIFY_CHANNEL, connection_options, redact_url

__all__ = [
    "CONNECTIONS_CHANGED",
    "ChangeListener",
    "ChangesHook",
    "Notice",
    "StoreHealth",
    "parse_notice",
]

log = logging.getLogger(__name__)

CONNECTIONS_CHANGED = "connections_changed"
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0


@dataclass(frozen=True)
class Notice:
    """One notification: what kind of thing changed, and which."""

    kind: str
    ident: str

    def change_event(self) -> ChangeEvent | None:
        """The admin-path event this notice stands for, or None when it is not one."""
        try:
            kind = ChangeKind(self.kind)
        except ValueError:
            return None
        if kind == ChangeKind.TUNNEL_DELETED:
            return ChangeEvent(kind, self.ident, force=True)
        if kind in (
            ChangeKind.TUNNEL_CREATED,
            ChangeKind.CREDENTIAL_ADDED,
            ChangeKind.ROUTE_ADDED,
            ChangeKind.ROUTE_DELETED,
        ):
            return ChangeEvent(kind, self.ident)
        if kind == ChangeKind.SESSIONS_REVOKED:
            field_name, _, value = self.ident.partition("=")
            if field_name == "email":
                return ChangeEvent(kind, email=value)
            return ChangeEvent(kind, aud=value)
        if kind == ChangeKind.KEYS_ROTATED:
            return ChangeEvent(kind)
        return ChangeEvent(kind, name=self.ident or None)


def parse_notice(payload: str) -> Notice:
    kind, _, ident = payload.partition(":")
    return Notice(kind, ident)


class StoreHealth(Collector):
    """Whether this edge can reach its store right now (``/ready`` and metrics)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._store_up = True
        self._listening = backend != "postgresql"
        self.last_error = ""
        self.last_resync: float | None = None
        self.changed = trio.Event()
        """Set (and replaced) whenever :attr:`ok` flips."""

    @property
    def ok(self) -> bool:
        return self._store_up and self._listening

    @property
    def store_up(self) -> bool:
        return self._store_up

    @store_up.setter
    def store_up(self, value: bool) -> None:
        self._set(store_up=value)

    @property
    def listening(self) -> bool:
        return self._listening

    @listening.setter
    def listening(self, value: bool) -> None:
        self._set(listening=value)

    def _set(self, *, store_up: bool | None = None, listening: bool | None = None) -> None:
        before = self.ok
        if store_up is not None:
            self._store_up = store_up
        if listening is not None:
            self._listening = listening
        if self.ok != before:
            log.log(logging.INFO if self.ok else logging.WARNING,
                    "store health: %s", "ok" if self.ok else "unavailable, serving from memory")
            self.changed.set()
            self.changed = trio.Event()

    def report(self) -> dict[str, object]:
        report: dict[str, object] = {
            "backend": self.backend,
            "status": "ok" if self.ok else "unavailable",
        }
        if not self.ok:
            report["detail"] = self.last_error or "not listening for changes"
            report["serving_from"] = "memory"
        return report

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tunnelgate_edge_store_up",
            "1 when the edge reaches its store and hears its change notifications, else 0 "
            "(the edge keeps serving from memory).",
            value=1 if self.ok else 0,
        )


ChangesHook = Callable[[Sequence[ChangeEvent]], Awaitable[None]]


class ChangeListener:
    """LISTENs on its own connection and applies notices in batches; re-reads on every
    (re)connection and every ``resync_interval``."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        apply_changes: ChangesHook,
        resync: Callable[[], Awaitable[None]],
        health: StoreHealth,
        resync_interval: float,
        on_connections_changed: Callable[[], None] = lambda: None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._url = url
        self._password = password
        self._apply_changes = apply_changes
        self._resync = resync
        self._health = health
        self._resync_interval = resync_interval
        self._on_connections_changed = on_connections_changed
        self._jitter = jitter
        self.batches_applied = 0
        self.applied = trio.Event()
        """Set (and replaced) after each batch of changes and each re-read is applied."""
        self.last_applied: tuple[float, tuple[ChangeEvent, ...]] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        options = connection_options(self._url, self._password)
        # Keepalives find a silently dead link; an idle LISTEN otherwise waits forever.
        conn = psycopg.connect(
            self._url, keepalives=1, keepalives_idle=10, keepalives_interval=3,
            keepalives_count=3, **options,
        )
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        delay = RECONNECT_MIN
        started = False
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect)
            except psycopg.Error as exc:
                self._down(exc)
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(delay * (0.5 + self._jitter()))
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self._health.listening = True
            log.info("listening for store changes on %s", redact_url(self._url))
            try:
                # Whatever changed while nobody listened is read now.
                await self._safe_resync()
                if not started:
                    task_status.started()
                    started = True
                await self._listen(conn)
            except psycopg.Error as exc:
                self._down(exc)
            finally:
                conn.close()

    def _down(self, exc: BaseException) -> None:
        lines = str(exc).strip().splitlines()
        self._health.last_error = lines[0] if lines else type(exc).__name__
        if self._health.listening:
            log.warning("lost the store change listener: %s", self._health.last_error)
        self._health.listening = False

    async def _listen(self, conn: psycopg.Connection[Any]) -> None:
        next_resync = trio.current_time() + self._resync_interval
        while True:
            with trio.move_on_at(next_resync):
                await trio.lowlevel.wait_readable(conn.fileno())
                notices = self._drain(conn)
                if notices:
                    await self._apply(notices)
                continue
            await self._safe_resync()
            next_resync = trio.current_time() + self._resync_interval

    @staticmethod
    def _drain(conn: psycopg.Connection[Any]) -> list[Notice]:
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the listening connection was closed")
        notices: list[Notice] = []
        while (note := pgconn.notifies()) is not None:
            notices.append(parse_notice(note.extra.decode("utf-8", "replace")))
        return notices

    async def _apply(self, notices: list[Notice]) -> None:
        events = list(dict.fromkeys(e for n in notices if (e := n.change_event()) is not None))
        if any(n.kind == CONNECTIONS_CHANGED for n in notices):
            self._on_connections_changed()
        if not events:
            return
        log.debug("applying %d store changes: %s", len(events), ",".join(e.kind for e in events))
        try:
            await self._apply_changes(events)
        except StoreError as exc:
            # The next notice or resync tries again; what the edge holds stays in force.
            log.warning("could not apply store changes: %s", exc)
            return
        self.batches_applied += 1
        self.last_applied = (time.time(), tuple(events))
        log.info("applied store changes count=%d kinds=%s", len(events),
                 ",".join(sorted({e.kind for e in events})))
        self._signal_applied()

    def _signal_applied(self) -> None:
        self.applied.set()
        self.applied = trio.Event()

    async def _safe_resync(self) -> None:
        try:
            await self._resync()
            self._health.last_resync = time.time()
            self._signal_applied()
        except StoreError as exc:
            log.warning("store re-read failed, serving from memory: %s", exc)
