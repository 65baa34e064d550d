"""Several edges on one PostgreSQL: the live-connection registry, forwarding, status.

Every ``heartbeat_interval`` the edge writes which tunnel connections it holds (stamped by the
database clock) and reads which other edges hold which tunnels, so the proxy can forward a
request for a tunnel this edge has no connection to (:mod:`edge.cluster_forward`). A killed edge
stops heartbeating and its rows expire after ``expiry``; a drained edge removes them at once.
Changes made on other edges reach this one through :mod:`edge.cluster_changes`. None of this is
on the request path: requests read the snapshots, which are swapped whole.

PostgreSQL unavailable: the edge keeps serving from what it holds (``StoreHealth``); admin
writes fail with 503 ``store_unavailable`` (nothing acknowledged is lost).

Errors: this module raises none of its own; database failures are logged and retried, and the
edge keeps its last snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import trio

from edge.cluster_changes import ChangeListener, ChangesHook, StoreHealth
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
from edge.store.postgres import PostgresStore, read_password_file
from edge.store.postgres_cluster import ClusterConnection, ClusterSnapshot
from edge.store.schema_pg import PG_MIGRATIONS
from edge.tunnels import TunnelRegistry

__all__ = [
    "ClusterMembership",
    "ClusterNode",
    "ClusterSettings",
    "PeerEdge",
    "open_listener",
    "open_serving_store",
]

log = logging.getLogger(__name__)

INTERNAL_MAX_HEADER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ClusterSettings:
    edge_id: str
    internal_url: str = ""
    heartbeat_interval: float = 2.0
    expiry: float = 10.0
    resync_interval: float = 30.0


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
