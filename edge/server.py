"""The edge process: four listeners around one in-memory state.

    public   HTTP (and HTTPS, certificates chosen by SNI) -> http11 -> proxy -> tunnel stream
    tunnel   connectors dial in here (WebSocket, credential checked before the upgrade)
    admin    the admin API; loopback by default, never shares the public listener
    ops      /healthz, /ready and /metrics for load balancers, systemd and Prometheus

The request path reads only in-memory snapshots (`EdgeState.routes`, `EdgeState.credentials`).
The admin API writes the store, then tells the state to rebuild those snapshots, so a new route
or a deleted tunnel takes effect on the next request without the request path touching SQLite.
On a PostgreSQL store (several edges) `edge.cluster.ClusterNode` also listens for the other
edges' changes and applies them through the same hook, keeps this edge's rows in the connection
registry, and runs the internal listener that serves requests other edges forward here.

Shutdown (`EdgeRuntime.drain`): STOPPING=1 to systemd, stop accepting on every listener but
ops (/ready turns 503), give in-flight requests the grace period, tell connectors to go away
(GoAway), then cancel what is left. `EdgeRuntime.shutdown` is the impatient version.

systemd: READY=1 once every listener is bound; WATCHDOG=1 at half of WatchdogSec, each time the
ops listener answered its own /healthz (or, without one, the event loop turned).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from edge.accepting import serve_listener
from edge.access.gate import AccessGate
from edge.access.runtime import AccessRuntime, settings_from_config
from edge.admin import AdminApi, ChangeEvent, ChangeKind, serve_admin
from edge.cluster import ClusterNode, open_serving_store
from edge.cluster_changes import StoreHealth
from edge.config import EdgeConfig
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    Relay,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)
from edge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy
from edge.routes import Route, RouteTable
from edge.store import Store
from edge.tunnels import TunnelEndpoint, TunnelEndpointSettings, TunnelRegistry
from tunnel.protocol import ErrorCode
from tunnel.session import SessionTiming
from tunnel.systemd_notify import (
    SystemdNotifier,
    event_loop_turns,
    http_health_check,
    run_watchdog,
)

log = logging.getLogger(__name__)

GOAWAY_FLUSH_TIMEOUT = 2.0
SESSION_CHANGES = frozenset({ChangeKind.SESSION_SAVED, ChangeKind.SESSION_DELETED})


@dataclass
class EdgeState:
    """What the request path reads; rebuilt from the store whenever the admin API changes it."""

    store: Store
    routes: RouteTable = field(default_factory=RouteTable)
    credentials: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def reload(self) -> None:
        tunnels = {t.id: t.name for t in self.store.list_tunnels()}
        self.routes = RouteTable(
            Route(r.hostname, r.tunnel_id, tunnels.get(r.tunnel_id, r.tunnel_id))
            for r in self.store.list_routes()
        )
        self.credentials = {
            tunnel_id: tuple(hashes)
            for tunnel_id, hashes in self.store.tunnel_secret_hashes().items()
        }


@dataclass
class EdgeRuntime:
    """Handed to whoever started the edge: bound addresses and a way to stop it."""

    listeners: dict[str, str]
    state: EdgeState
    registry: TunnelRegistry
    shutdown: Callable[[], None]
    drain: Callable[[float], Awaitable[None]]
    """Stop accepting, let in-flight requests finish within the grace period, then stop."""
    metrics: EdgeMetrics
    access: AccessRuntime | None = None
    cluster: ClusterNode | None = None
    """Several edges on PostgreSQL: the change listener, registry rows and forwarding hop."""


class InFlightRequests:
    """Counts requests being handled, so a drain knows when the last one has finished.

    An upgraded request stays counted until its relay ends, though the relay runs after the
    handler returned: the handler hands its place over without leaving (``handle_public``).
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.count == 0:
            self._idle = trio.Event()
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _bind(address: str) -> trio.SocketListener:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    return listeners[0]


def _peer_ip(stream: trio.abc.Stream) -> str:
    inner = stream
    if type(stream) is not trio.SocketStream:  # the usual case skips two ABC checks
        inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        peer = inner.socket.getpeername()
        return str(peer[0]) if isinstance(peer, tuple) else "unix"
    return "unknown"


def build_tls_context(config: EdgeConfig) -> ssl.SSLContext | None:
    """One server context; SNI picks among the configured certificates by their names."""
    certs = config.tls.certificates
    if not certs:
        return None
    contexts: list[tuple[ssl.SSLContext, set[str]]] = []
    for cert in certs:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
        contexts.append((ctx, _certificate_names(cert.cert_file)))
    default = contexts[0][0]

    def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return
        name = server_name.lower().rstrip(".")
        for ctx, names in contexts:
            if name in names or ("*." + name.partition(".")[2]) in names:
                sock.context = ctx
                return

    default.sni_callback = pick
    return default


def _certificate_names(path: object) -> set[str]:
    from cryptography import x509

    with open(str(path), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    names: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.update(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return names


async def serve_edge(
    config: EdgeConfig,
    *,
    notifier: SystemdNotifier | None = None,
    task_status: trio.TaskStatus[EdgeRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    store = await trio.to_thread.run_sync(open_serving_store, config)
    try:
        await _serve(config, store, notifier or SystemdNotifier(), task_status)
    finally:
        store.close()


async def _serve(
    config: EdgeConfig,
    store: Store,
    notifier: SystemdNotifier,
    task_status: trio.TaskStatus[EdgeRuntime],
) -> None:
    state = EdgeState(store)
    await trio.to_thread.run_sync(state.reload)
    registry = TunnelRegistry()
    edge_id = config.edge.id
    timing = SessionTiming(
        heartbeat_interval=config.tunnel.heartbeat_interval,
        heartbeat_timeout=config.tunnel.heartbeat_timeout,
    )
    endpoint = TunnelEndpoint(
        registry, lambda: state.credentials, TunnelEndpointSettings(edge_id=edge_id, timing=timing)
    )
    metrics = EdgeMetrics()
    metrics.observe_tunnels(registry)
    access = await AccessRuntime.open(
        store, settings_from_config(config), state_dir=config.edge.state_dir,
        count_decision=metrics.auth_decision,
    )
    node = ClusterNode.create(config, store, registry, metrics)
    proxy = Proxy(lambda: state.routes, registry, authorize=AccessGate(access), metrics=metrics,
                  forward=node.forward if node is not None else None)
    in_flight = InFlightRequests()
    limits = HttpLimits(
        max_header_bytes=config.http.max_header_bytes,
        max_headers=config.http.max_headers,
        header_timeout=config.http.header_timeout,
        idle_timeout=config.http.idle_timeout,
        max_body_bytes=config.http.max_body_bytes or None,
    )
    trusted = tuple(config.http.trusted_proxies)

    bound: dict[str, trio.SocketListener] = {}
    for name, address in (
        ("public", config.listen.public),
        ("public_tls", config.listen.public_tls),
        ("tunnel", config.listen.tunnel),
        ("admin", config.listen.admin),
        ("ops", config.listen.ops),
        ("internal", config.cluster.listen if node is not None else ""),
    ):
        if address:
            bound[name] = await _bind(address)
    addresses = {name: _address(listener) for name, listener in bound.items()}
    tunnel_url = config.tunnel.public_url or f"ws://{addresses['tunnel']}"

    async def apply_changes(events: Sequence[ChangeEvent]) -> None:
        # One re-read per batch however many changes it holds (a burst of notifications);
        # none for a batch of logins and logouts elsewhere, which only touch Access sessions.
        if any(event.kind not in SESSION_CHANGES for event in events):
            await trio.to_thread.run_sync(state.reload)
        for event in events:
            await access.on_change(event)
            if event.kind == "tunnel_deleted" and event.tunnel_id:
                # A permanent refusal stops the connector for good (exit code 3); its
                # credentials are gone from the store too, so a restarted connector meets a 401.
                for conn in registry.connections(event.tunnel_id):
                    await conn.session.refuse("tunnel_deleted", "the tunnel was deleted", True)

    async def on_change(event: ChangeEvent) -> None:
        await apply_changes([event])

    async def resync() -> None:
        await trio.to_thread.run_sync(state.reload)
        await access.reload_catalog()

    admin = AdminApi(
        store,
        live_connections=lambda: (
            node.live_connections(registry) if node is not None else registry.snapshot(edge_id)
        ),
        edge_url=lambda: tunnel_url,
        on_change=on_change,
    )
    tls_context = build_tls_context(config)

    async def serve_public(stream: trio.abc.Stream, scheme: str) -> None:
        server_name = None
        if isinstance(stream, trio.SSLStream):
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                await stream.aclose()
                return
            server_name = _sni(stream)
        # serve_http_connection closes the stream; serve_listener makes sure of it.
        await serve_http_connection(
            stream,
            handle_public,
            limits=limits,
            client_ip=_peer_ip(stream),
            scheme=scheme,
            trusted_proxies=trusted,
            server_name=server_name,
            encoded_slash_allowed=access.allows_encoded_slash,
        )

    async def handle_public(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> Relay | None:
        in_flight.enter()
        relay: Relay | None = None
        try:
            relay = await proxy.handle(request, body, respond)
        finally:
            if relay is None:
                in_flight.leave()
                metrics.request_finished(respond.status)
        if relay is None:
            return None
        # The WebSocket is still in flight, and answered only once its relay ends.
        return partial(counted_relay, relay, respond.status)

    async def counted_relay(relay: Relay, status: int) -> None:
        try:
            await relay()
        finally:
            in_flight.leave()
            metrics.request_finished(status)

    async def serve_tunnel(stream: trio.abc.Stream) -> None:
        await endpoint.serve(stream, _peer_ip(stream))

    ops = OpsHandler(registry, metrics, store_health=node.health if node is not None else None)

    async def serve_ops(stream: trio.abc.Stream) -> None:
        await serve_http_connection(
            stream, ops.handle, limits=limits, client_ip=_peer_ip(stream),
            scheme="http", trusted_proxies=(),
        )

    async with trio.open_nursery() as nursery:
        listener_scope = trio.CancelScope()  # everything: shutdown() cancels it
        accept_scope = trio.CancelScope()  # accepting new connections: a drain cancels it
        accepting_stopped = trio.Event()  # set once those listening sockets are closed

        def shutdown() -> None:
            endpoint.accepting = False
            listener_scope.cancel()

        async def drain(grace_period: float) -> None:
            if ops.draining:
                return
            ops.draining = True
            endpoint.accepting = False
            accept_scope.cancel()
            with trio.move_on_after(GOAWAY_FLUSH_TIMEOUT):
                await accepting_stopped.wait()
            notifier.stopping(f"draining, {in_flight.count} requests in flight")
            log.info("edge draining edge=%s in_flight=%d grace=%gs",
                     edge_id, in_flight.count, grace_period)
            with trio.move_on_after(grace_period) as grace:
                await in_flight.wait_idle()
            if grace.cancelled_caught:
                log.warning("edge grace period over edge=%s cut=%d", edge_id, in_flight.count)
            if node is not None:
                await node.membership.retire()
            sessions = [conn.session for conn in registry.all()]
            for session in sessions:
                session.go_away(ErrorCode.NO_ERROR, "edge shutting down")
            with trio.move_on_after(GOAWAY_FLUSH_TIMEOUT):
                for session in sessions:
                    await session.wait_closed()
            log.info("edge drained edge=%s", edge_id)
            shutdown()

        async def run_listeners() -> None:
            with listener_scope:
                # Handlers run in `connections`, accept loops in `accepting`: a drain stops the
                # accept loops (closing those sockets) while accepted connections carry on.
                async with trio.open_nursery() as connections:
                    if "ops" in bound:
                        connections.start_soon(serve_listener, bound["ops"], serve_ops)
                    with accept_scope:
                        async with trio.open_nursery() as accepting:
                            if "public" in bound:
                                accepting.start_soon(
                                    serve_listener, bound["public"],
                                    partial(serve_public, scheme="http"), connections,
                                )
                            if "public_tls" in bound and tls_context is not None:
                                accepting.start_soon(
                                    serve_listener,
                                    trio.SSLListener(
                                        bound["public_tls"], tls_context, https_compatible=True
                                    ),
                                    partial(serve_public, scheme="https"),
                                    connections,
                                )
                            accepting.start_soon(
                                serve_listener, bound["tunnel"], serve_tunnel, connections
                            )
                            if "admin" in bound:
                                accepting.start_soon(serve_admin, bound["admin"], admin)
                            if "internal" in bound and node is not None:
                                accepting.start_soon(
                                    serve_listener, bound["internal"],
                                    partial(node.serve_internal, proxy=proxy, limits=limits),
                                    connections,
                                )
                    accepting_stopped.set()
            nursery.cancel_scope.cancel()

        await nursery.start(access.run)
        if node is not None:
            internal = config.cluster.advertise_url or (
                f"http://{addresses['internal']}" if "internal" in addresses else ""
            )
            await nursery.start(partial(node.run, internal_url=internal,
                                        apply_changes=apply_changes, resync=resync))
        nursery.start_soon(run_listeners)
        health = http_health_check(addresses["ops"]) if "ops" in addresses else event_loop_turns
        nursery.start_soon(run_watchdog, notifier, health)
        log.info("edge ready edge=%s listeners=%s", edge_id, json.dumps(addresses))
        notifier.ready(f"serving edge {edge_id}")
        task_status.started(
            EdgeRuntime(addresses, state, registry, shutdown, drain, metrics, access, node)
        )


def _sni(stream: trio.SSLStream[trio.abc.Stream]) -> str | None:
    obj = getattr(stream, "_ssl_object", None)
    name = getattr(obj, "server_hostname", None) if obj is not None else None
    return str(name) if name else None


class OpsHandler:
    """`/healthz` (the process serves), `/ready` (it takes traffic: 503 once draining, so a
    load balancer moves on) and `/metrics` (Prometheus)."""

    def __init__(
        self,
        registry: TunnelRegistry,
        metrics: EdgeMetrics,
        *,
        store_health: StoreHealth | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._store_health = store_health
        self.draining = False

    async def handle(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        if request.path == "/healthz":
            await _json(respond, 200, {"status": "ok"})
        elif request.path == "/ready":
            if self.draining:
                await _json(respond, 503, {"status": "draining",
                                           "connections": len(self._registry)})
            else:
                ready: dict[str, object] = {"status": "ready", "connections": len(self._registry)}
                if self._store_health is not None:
                    # Still ready without the store: the edge serves from memory, and every
                    # edge of a cluster shares the store, so failing here would fail them all.
                    ready["store"] = self._store_health.report()
                await _json(respond, 200, ready)
        elif request.path == "/metrics":
            data = self._metrics.exposition()
            await respond.start(200, [(b"content-type", METRICS_CONTENT_TYPE.encode()),
                                      (b"content-length", str(len(data)).encode())])
            await respond.send(data)
            await respond.end()
        else:
            await respond.error(
                404, "Not found", "The ops listener serves /healthz, /ready and /metrics."
            )


async def _json(respond: ResponseWriter, status: int, payload: object) -> None:
    data = json.dumps(payload).encode()
    await respond.start(
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
    )
    await respond.send(data)
    await respond.end()


__all__ = ["EdgeRuntime", "EdgeState", "ErrorCode", "serve_edge"]
