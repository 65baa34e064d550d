"""Several edges on one PostgreSQL: change propagation, the live-connection registry, status.

Every administrative write commits a ``NOTIFY tunnelgate, '<kind>:<id>'`` with it
(:mod:`edge.store.postgres`). Each edge keeps one extra connection that LISTENs, waits on its
socket from trio (``trio.lowlevel.wait_readable``: no thread parked on it), and hands every batch
of notices to the same hook the local admin API uses, so routes, tunnel credentials and the
Access catalog are rebuilt within moments of a change on any edge. Notifications are not
durable (a listener that was disconnected misses them), so each (re)connection and every
``resync_interval`` triggers a full re-read as the safety net. None of this is on the request
path: requests read the snapshots, which are swapped whole.

The registry half: every ``heartbeat_interval`` the edge writes which tunnel connections it
holds (stamped by the database clock) and reads which other edges hold which tunnels, so the
proxy can forward a request for a tunnel this edge has no connection to
(:mod:`edge.cluster_forward`). A killed edge stops heartbeating and its rows expire after
``expiry``; a drained edge removes them at once.

PostgreSQL unavailable: the edge keeps serving from what it holds; :class:`StoreHealth` says so
on ``/ready`` and as the ``tunnelgate_edge_store_up`` gauge; the listener reconnects with
backoff; admin writes fail with 503 ``store_unavailable`` (nothing acknowledged is lost).

Errors: this module raises none of its own; database failures are logged and retried, and the
edge keeps its last snapshots.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import trio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.admin.api import ChangeEvent, ChangeKind
from edge.cluster_forward import (
    ForwardedRequestHandler,
    HopAuthenticator,
    HopClient,
    load_cluster_secret,
)
from edge.config import EdgeConfig
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy
from edge.store import Store, StoreError, open_store
from edge.store.postgres import (
    NOTIFY_CHANNEL,
    PostgresStore,
    connection_options,
    read_password_file,
    redact_url,
)
from edge.store.postgres_cluster import ClusterConnection, ClusterSnapshot
from edge.store.schema_pg import PG_MIGRATIONS
from edge.tunnels import TunnelRegistry

__all__ = [
    "ChangeListener",
    "ClusterMembership",
    "ClusterNode",
    "ClusterSettings",
    "Notice",
    "PeerEdge",
    "StoreHealth",
    "open_listener",
    "open_serving_store",
    "parse_notice",
]

log = logging.getLogger(__name__)

CONNECTIONS_CHANGED = "connections_changed"
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0
INTERNAL_MAX_HEADER_BYTES = 1024 * 1024


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


@dataclass(frozen=True)
class ClusterSettings:
    edge_id: str
    internal_url: str = ""
    heartbeat_interval: float = 2.0
    expiry: float = 10.0
    resync_interval: float = 30.0


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


@dataclass(frozen=True)
class PeerEdge:
    """Another edge that holds connections of a tunnel."""

    edge_id: str
    internal_url: str
    connections: int


@dataclass
class ClusterMembership:
    """This edge's rows in the registry, and what it knows of the others' (kept in memory)."""

    store: PostgresStore
    registry: TunnelRegistry
    health: StoreHealth
    settings: ClusterSettings
    peers_by_tunnel: Mapping[str, tuple[PeerEdge, ...]] = field(default_factory=dict)
    snapshot: ClusterSnapshot | None = None
    refreshed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) after each heartbeat that read the cluster."""
    _wake: trio.Event = field(default_factory=trio.Event)
    _published: frozenset[str] = frozenset()
    _announced: bool = False

    def holders(self, tunnel_id: str) -> tuple[PeerEdge, ...]:
        """Other edges that held a connection of ``tunnel_id`` at the last read."""
        return self.peers_by_tunnel.get(tunnel_id, ())

    def refresh_soon(self) -> None:
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._beat()
        task_status.started()
        while True:
            with trio.move_on_after(self.settings.heartbeat_interval):
                await _first_of(self._wake.wait, self.registry.changed.wait)
            self._wake = trio.Event()
            await self._beat()

    def _held(self) -> list[ClusterConnection]:
        return [
            ClusterConnection(
                connection_id=conn.connection_id,
                edge_id=self.settings.edge_id,
                tunnel_id=conn.tunnel_id,
                connector_id=conn.connector_id,
                conn_index=conn.conn_index,
                client=conn.client,
                since=datetime.fromtimestamp(conn.since, tz=UTC),
            )
            for conn in self.registry.all()
        ]

    async def _beat(self) -> None:
        held = self._held()
        ids = frozenset(c.connection_id for c in held)

        def write_and_read() -> ClusterSnapshot:
            if not self._announced:
                self.store.announce_edge(self.settings.edge_id, self.settings.internal_url)
                self._announced = True
            try:
                self.store.heartbeat_edge(
                    self.settings.edge_id, held, changed=ids != self._published,
                    expiry=self.settings.expiry,
                )
            except LookupError:
                # Another process retired this edge id (or a sweep did): announce again.
                self.store.announce_edge(self.settings.edge_id, self.settings.internal_url)
                self.store.heartbeat_edge(self.settings.edge_id, held, changed=True,
                                          expiry=self.settings.expiry)
            return self.store.cluster_snapshot(self.settings.expiry)

        try:
            snapshot = await trio.to_thread.run_sync(write_and_read)
        except StoreError as exc:
            self.health.store_up = False
            self.health.last_error = exc.message
            return
        self.health.store_up = True
        self._published = ids
        self.snapshot = snapshot
        peers = _peers(snapshot, self.settings.edge_id)
        if peers != self.peers_by_tunnel:
            # Which other edge holds which tunnel decides where requests are forwarded.
            log.info("cluster view changed peers=%s", _describe_peers(peers) or "none")
        self.peers_by_tunnel = peers
        self.refreshed.set()
        self.refreshed = trio.Event()

    async def retire(self) -> None:
        """Drop this edge's rows now (a drain), so peers stop forwarding to it at once."""
        try:
            await trio.to_thread.run_sync(self.store.retire_edge, self.settings.edge_id)
        except StoreError as exc:
            log.warning("could not retire edge %s from the registry: %s",
                        self.settings.edge_id, exc)


def _peers(snapshot: ClusterSnapshot, own_id: str) -> dict[str, tuple[PeerEdge, ...]]:
    urls = {edge.edge_id: edge.internal_url for edge in snapshot.edges}
    counts: dict[str, dict[str, int]] = {}
    for conn in snapshot.connections:
        if conn.edge_id == own_id or not urls.get(conn.edge_id):
            continue
        per_edge = counts.setdefault(conn.tunnel_id, {})
        per_edge[conn.edge_id] = per_edge.get(conn.edge_id, 0) + 1
    return {
        tunnel_id: tuple(PeerEdge(edge, urls[edge], n) for edge, n in sorted(per_edge.items()))
        for tunnel_id, per_edge in counts.items()
    }


def _describe_peers(peers: Mapping[str, tuple[PeerEdge, ...]]) -> str:
    """``tunnel:edge=connections,...`` per tunnel, ``;``-separated, in a stable order."""
    return ";".join(
        f"{tunnel_id}:" + ",".join(f"{peer.edge_id}={peer.connections}" for peer in held)
        for tunnel_id, held in sorted(peers.items())
    )


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def run(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


def open_serving_store(config: EdgeConfig) -> Store:
    """The store ``serve`` runs on. A PostgreSQL schema is migrated only when the config asks
    (``store.migrate_on_start``): with several edges, an upgrade migrates once, on purpose."""
    if not config.store.is_postgres:
        return open_store(config)
    store = open_store(config, apply_migrations=config.store.migrate_on_start)
    version, needed = store.schema_version(), PG_MIGRATIONS[-1].version
    if version < needed:
        store.close()
        raise StoreError(
            f"the PostgreSQL store has schema version {version}; this edge needs {needed}",
            hint="run: tunnelgate-edge migrate --config <edge.toml> "
            "(or set store.migrate_on_start = true)",
        )
    return store


@dataclass
class ClusterNode:
    """What a PostgreSQL-backed edge runs besides serving: the change listener, its rows in
    the registry, and both ends of the forwarding hop (when ``cluster.secret_file`` is set)."""

    config: EdgeConfig
    store: PostgresStore
    health: StoreHealth
    membership: ClusterMembership
    hop_authenticator: HopAuthenticator | None
    hop_client: HopClient | None
    listener: ChangeListener | None = None

    @classmethod
    def create(
        cls, config: EdgeConfig, store: Store, registry: TunnelRegistry, metrics: EdgeMetrics
    ) -> ClusterNode | None:
        """None for a single SQLite edge."""
        if not isinstance(store, PostgresStore):
            return None
        health = StoreHealth("postgresql")
        metrics.registry.register(health)
        settings = ClusterSettings(
            edge_id=config.edge.id,
            heartbeat_interval=config.cluster.heartbeat_interval,
            expiry=config.cluster.expiry,
            resync_interval=config.cluster.resync_interval,
        )
        authenticator = client = None
        if config.cluster.secret_file is not None:
            authenticator = HopAuthenticator(load_cluster_secret(config.cluster.secret_file))
            client = HopClient(authenticator, edge_id=config.edge.id)
        membership = ClusterMembership(store, registry, health, settings)
        return cls(config, store, health, membership, authenticator, client)

    async def run(
        self,
        *,
        internal_url: str,
        apply_changes: ChangesHook,
        resync: Callable[[], Awaitable[None]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.membership.settings = replace(self.membership.settings, internal_url=internal_url)
        listener = self.listener = open_listener(
            self.config, apply_changes=apply_changes, resync=resync, health=self.health,
            on_connections_changed=self.membership.refresh_soon,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.run)
                await nursery.start(self.membership.run)
                task_status.started()
        finally:
            if self.hop_client is not None:
                with trio.CancelScope(shield=True):
                    await self.hop_client.aclose()

    async def forward(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        tunnel_id: str,
        head: dict[str, object],
        guard: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None,
    ) -> bool:
        """Answer through a peer that holds the tunnel; False when there is none."""
        peers = self.membership.holders(tunnel_id)
        if self.hop_client is None or not peers:
            return False
        return await self.hop_client.forward(
            peers, request, body, respond, tunnel_id, dict(head), guard
        )

    async def serve_internal(
        self, stream: trio.abc.Stream, *, proxy: Proxy, limits: HttpLimits
    ) -> None:
        """One connection on the internal listener: forwarded requests from peers only."""
        if self.hop_authenticator is None:
            await stream.aclose()
            return
        handler = ForwardedRequestHandler(self.hop_authenticator, proxy.serve_head)
        peer = "unknown"
        if isinstance(stream, trio.SocketStream):
            peer = str(stream.socket.getpeername()[0])
        async with stream:
            await serve_http_connection(
                stream,
                handler,
                limits=replace(limits, max_header_bytes=INTERNAL_MAX_HEADER_BYTES),
                client_ip=peer,
                scheme="http",
                trusted_proxies=(),
                # The edge that forwarded it already applied the application's path rules.
                encoded_slash_allowed=lambda host: True,
            )

    def live_connections(self, registry: TunnelRegistry) -> dict[str, list[dict[str, object]]]:
        """Every edge's connections per tunnel: this edge's live, the others' as last read."""
        merged: dict[str, list[dict[str, object]]] = {
            tunnel_id: list(infos)
            for tunnel_id, infos in registry.snapshot(self.config.edge.id).items()
        }
        snapshot = self.membership.snapshot
        for conn in snapshot.connections if snapshot is not None else ():
            if conn.edge_id == self.config.edge.id:
                continue
            merged.setdefault(conn.tunnel_id, []).append(
                {
                    "connection_id": conn.connection_id,
                    "connector_id": conn.connector_id,
                    "conn_index": conn.conn_index,
                    "edge_id": conn.edge_id,
                    "since": conn.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "client": conn.client,
                }
            )
        return merged


def open_listener(
    config: EdgeConfig,
    *,
    apply_changes: ChangesHook,
    resync: Callable[[], Awaitable[None]],
    health: StoreHealth,
    on_connections_changed: Callable[[], None] = lambda: None,
) -> ChangeListener:
    """The change listener for a PostgreSQL-backed edge config."""
    return ChangeListener(
        config.store.url,
        password=read_password_file(config.store.password_file),
        apply_changes=apply_changes,
        resync=resync,
        health=health,
        resync_interval=config.cluster.resync_interval,
        on_connections_changed=on_connections_changed,
    )
