"""The edge process: four listeners around one in-memory state.

    public   HTTP (and HTTPS, certificates chosen by SNI) -> http11 -> proxy -> tunnel stream
    tunnel   connectors dial in here (WebSocket, credential checked before the upgrade)
    admin    the admin API; loopback by default, never shares the public listener
    ops      /healthz and /ready for load balancers and systemd; metrics later

The request path reads only in-memory snapshots (`EdgeState.routes`, `EdgeState.credentials`).
The admin API writes the store, then tells the state to rebuild those snapshots, so a new route
or a deleted tunnel takes effect on the next request without the request path touching SQLite.

Shutdown: stop accepting, tell connectors to drain (GoAway), give in-flight requests the grace
period, then cancel what is left.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from edge.admin import AdminApi, ChangeEvent, serve_admin
from edge.config import EdgeConfig
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)
from edge.proxy import Proxy
from edge.routes import Route, RouteTable
from edge.store import Store
from edge.store.sqlite import SqliteStore
from edge.tunnels import TunnelEndpoint, TunnelEndpointSettings, TunnelRegistry
from tunnel.protocol import ErrorCode
from tunnel.session import SessionTiming

log = logging.getLogger(__name__)


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


def _address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _bind(address: str) -> trio.SocketListener:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    listeners = await trio.open_tcp_listeners(int(port), host=host)
    return listeners[0]


def _peer_ip(stream: trio.abc.Stream) -> str:
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
    config: EdgeConfig, *, task_status: trio.TaskStatus[EdgeRuntime] = trio.TASK_STATUS_IGNORED
) -> None:
    store = SqliteStore(config.store_path())
    try:
        await _serve(config, store, task_status)
    finally:
        store.close()


async def _serve(
    config: EdgeConfig, store: Store, task_status: trio.TaskStatus[EdgeRuntime]
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
    proxy = Proxy(lambda: state.routes, registry)
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
    ):
        if address:
            bound[name] = await _bind(address)
    addresses = {name: _address(listener) for name, listener in bound.items()}
    tunnel_url = config.tunnel.public_url or f"ws://{addresses['tunnel']}"

    async def on_change(event: ChangeEvent) -> None:
        await trio.to_thread.run_sync(state.reload)
        if event.kind == "tunnel_deleted" and event.tunnel_id:
            # A permanent refusal stops the connector for good (exit code 3); its credentials
            # are gone from the store too, so a restarted connector meets a 401.
            for conn in registry.connections(event.tunnel_id):
                await conn.session.refuse("tunnel_deleted", "the tunnel was deleted", True)

    admin = AdminApi(
        store,
        live_connections=lambda: registry.snapshot(edge_id),
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
        async with stream:
            await serve_http_connection(
                stream,
                proxy.handle,
                limits=limits,
                client_ip=_peer_ip(stream),
                scheme=scheme,
                trusted_proxies=trusted,
                server_name=server_name,
            )

    async def serve_tunnel(stream: trio.abc.Stream) -> None:
        await endpoint.serve(stream, _peer_ip(stream))

    ops = OpsHandler(registry)

    async def serve_ops(stream: trio.abc.Stream) -> None:
        async with stream:
            await serve_http_connection(
                stream, ops.handle, limits=limits, client_ip=_peer_ip(stream),
                scheme="http", trusted_proxies=(),
            )

    async with trio.open_nursery() as nursery:
        listener_scope = trio.CancelScope()

        def shutdown() -> None:
            endpoint.accepting = False
            listener_scope.cancel()

        async def run_listeners() -> None:
            with listener_scope:
                async with trio.open_nursery() as listeners:
                    if "public" in bound:
                        listeners.start_soon(
                            _serve_listener, bound["public"], partial(serve_public, scheme="http")
                        )
                    if "public_tls" in bound and tls_context is not None:
                        listeners.start_soon(
                            _serve_listener,
                            trio.SSLListener(bound["public_tls"], tls_context, https_compatible=True),
                            partial(serve_public, scheme="https"),
                        )
                    listeners.start_soon(_serve_listener, bound["tunnel"], serve_tunnel)
                    if "admin" in bound:
                        listeners.start_soon(serve_admin, bound["admin"], admin)
                    if "ops" in bound:
                        listeners.start_soon(_serve_listener, bound["ops"], serve_ops)
            nursery.cancel_scope.cancel()

        nursery.start_soon(run_listeners)
        log.info("edge ready edge=%s listeners=%s", edge_id, json.dumps(addresses))
        task_status.started(EdgeRuntime(addresses, state, registry, shutdown))


def _sni(stream: trio.SSLStream[trio.abc.Stream]) -> str | None:
    obj = getattr(stream, "_ssl_object", None)
    name = getattr(obj, "server_hostname", None) if obj is not None else None
    return str(name) if name else None


async def _serve_listener(
    listener: trio.abc.Listener[Any],
    handler: Callable[[Any], Awaitable[None]],
) -> None:
    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection handler failed")

    await trio.serve_listeners(guarded, [listener])


class OpsHandler:
    """`/healthz` (the process serves) and `/ready` (it holds tunnel connections)."""

    def __init__(self, registry: TunnelRegistry) -> None:
        self._registry = registry

    async def handle(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        if request.path == "/healthz":
            await _json(respond, 200, {"status": "ok"})
        elif request.path == "/ready":
            await _json(respond, 200, {"status": "ready", "connections": len(self._registry)})
        else:
            await respond.error(404, "Not found", "The ops listener serves /healthz and /ready.")


async def _json(respond: ResponseWriter, status: int, payload: object) -> None:
    data = json.dumps(payload).encode()
    await respond.start(
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
    )
    await respond.send(data)
    await respond.end()


__all__ = ["EdgeRuntime", "EdgeState", "ErrorCode", "serve_edge"]
