"""The tunnel endpoint: credential check, registration, and the registry of live connections.

A connector proves itself in the WebSocket upgrade request (`Authorization: Bearer <run
token>`); a bad or missing credential is answered with HTTP 401 before any WebSocket exists,
so an unauthenticated peer never reaches the frame parser. After the upgrade the connector's
`Register` must name the same tunnel its credential belongs to.

The registry is what the proxy asks "which live connection carries this tunnel?". It spreads
streams over a tunnel's connections by picking the least loaded one, skipping connections that
are draining, and it is touched only by tasks of the one trio run, so it needs no lock. A
connection's load is its open streams, a bulk transfer (``TunnelSession.bulk_streams``) counting
as ``BULK_STREAM_WEIGHT`` of them: a small request opened behind a 64 MiB download on the same
connection waits for up to a megabyte of it in the pipe, so small requests go to the other
connections while there are any (the head-of-line row in bench/README.md).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from tunnel.auth import decode_run_token, parse_bearer, verify_secret
from tunnel.errors import HandshakeError, InvalidRunToken, SessionClosed
from tunnel.protocol import Limits, Role, TunnelConnection
from tunnel.session import SessionTiming, TunnelSession
from tunnel.websocket_handshake import HandshakeRequest, Rejection, accept_websocket

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
BULK_STREAM_WEIGHT = 64
REGISTER_TIMEOUT = 10.0


@dataclass(eq=False)
class LiveConnection:
    """One registered tunnel connection held by this edge."""

    connection_id: str
    tunnel_id: str
    connector_id: str
    conn_index: int
    client: str
    since: float
    session: TunnelSession
    closed: trio.Event = field(default_factory=trio.Event)

    def info(self, edge_id: str) -> dict[str, object]:
        return {
            "connection_id": self.connection_id,
            "connector_id": self.connector_id,
            "conn_index": self.conn_index,
            "edge_id": edge_id,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "client": self.client,
        }


def _reject(status: int, reason: str) -> Rejection:
    return Rejection(status, reason.encode())


class TunnelRegistry:
    """Live connections per tunnel id."""

    def __init__(self) -> None:
        self._by_tunnel: dict[str, list[LiveConnection]] = {}
        self._turn = itertools.count()
        self.changed = trio.Event()
        self.registrations = 0
        """Connections registered since start; read by the metrics."""

    def add(self, conn: LiveConnection) -> None:
        self._by_tunnel.setdefault(conn.tunnel_id, []).append(conn)
        self.registrations += 1
        self._notify()

    def remove(self, conn: LiveConnection) -> None:
        conns = self._by_tunnel.get(conn.tunnel_id)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._by_tunnel[conn.tunnel_id]
            self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def connections(self, tunnel_id: str) -> list[LiveConnection]:
        return list(self._by_tunnel.get(tunnel_id, ()))

    def pick(self, tunnel_id: str) -> LiveConnection | None:
        """The least-loaded connection that still takes new streams, rotating among ties."""
        conns = self._by_tunnel.get(tunnel_id)
        if not conns:
            return None
        start = next(self._turn) % len(conns)
        best: LiveConnection | None = None
        best_load = 0
        for conn in conns[start:] + conns[:start] if start else conns:
            session = conn.session
            if session.draining:
                continue
            load = session.open_streams + BULK_STREAM_WEIGHT * len(session.bulk_streams)
            if best is None or load < best_load:
                best, best_load = conn, load
        return best

    def snapshot(self, edge_id: str) -> dict[str, list[dict[str, object]]]:
        return {
            tunnel_id: [c.info(edge_id) for c in conns]
            for tunnel_id, conns in self._by_tunnel.items()
        }

    def all(self) -> list[LiveConnection]:
        return [c for conns in self._by_tunnel.values() for c in conns]

    def __len__(self) -> int:
        return sum(len(c) for c in self._by_tunnel.values())


@dataclass(frozen=True)
class TunnelEndpointSettings:
    edge_id: str
    limits: Limits = field(default_factory=Limits)
    timing: SessionTiming = field(default_factory=SessionTiming)


class TunnelEndpoint:
    """Accepts connector connections on the tunnel listener."""

    def __init__(
        self,
        registry: TunnelRegistry,
        credentials: Callable[[], Mapping[str, tuple[str, ...]]],
        settings: TunnelEndpointSettings,
    ) -> None:
        self._registry = registry
        self._credentials = credentials
        self._settings = settings
        self.accepting = True

    def _authorize(self, request: HandshakeRequest) -> tuple[Rejection | None, str | None]:
        token = parse_bearer(request.header("authorization"))
        if token is None:
            return _reject(401, "missing tunnel credential (Authorization: Bearer <token>)"), None
        try:
            run_token = decode_run_token(token)
        except InvalidRunToken:
            return _reject(401, "malformed tunnel credential"), None
        hashes = self._credentials().get(run_token.tunnel_id)
        if not hashes or not verify_secret(run_token.secret, hashes):
            return _reject(401, "invalid tunnel credential or unknown tunnel"), None
        if not self.accepting:
            return _reject(503, "edge is shutting down"), None
        return None, run_token.tunnel_id

    async def serve(self, stream: trio.abc.Stream, client: str) -> None:
        authorized: list[str] = []

        def authorize(request: HandshakeRequest) -> Rejection | None:
            rejection, tunnel_id = self._authorize(request)
            if tunnel_id is not None:
                authorized.append(tunnel_id)
            if rejection is not None:
                log.info("tunnel handshake refused client=%s status=%s reason=%s",
                         client, rejection.status_code, rejection.body.decode())
            return rejection

        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                transport, _request = await accept_websocket(stream, authorize)
        except (trio.TooSlowError, HandshakeError) as error:
            log.debug("tunnel handshake failed client=%s error=%s", client, error)
            await stream.aclose()
            return
        tunnel_id = authorized[0]
        session = TunnelSession(
            transport,
            TunnelConnection(Role.EDGE, limits=self._settings.limits),
            timing=self._settings.timing,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            try:
                with trio.fail_after(REGISTER_TIMEOUT):
                    register = await session.accept_registration()
            except (trio.TooSlowError, SessionClosed) as error:
                log.info("tunnel registration failed tunnel=%s client=%s error=%s",
                         tunnel_id, client, error)
                await session.aclose()
                return
            if register.tunnel_id != tunnel_id:
                await session.refuse("bad_credentials", "credential is for another tunnel", True)
                return
            conn = LiveConnection(
                connection_id=str(uuid.uuid4()),
                tunnel_id=tunnel_id,
                connector_id=register.connector_id,
                conn_index=register.conn_index,
                client=client,
                since=time.time(),
                session=session,
            )
            session.registered(conn.connection_id, self._settings.edge_id)
            session.label = f"tunnel={tunnel_id} connection={conn.connection_id}"
            self._registry.add(conn)
            log.info("tunnel connection registered tunnel=%s connection=%s connector=%s index=%d",
                     tunnel_id, conn.connection_id, conn.connector_id, conn.conn_index)
            try:
                await session.wait_closed()
            finally:
                self._registry.remove(conn)
                conn.closed.set()
                log.info("tunnel connection closed tunnel=%s connection=%s",
                         tunnel_id, conn.connection_id)
                nursery.cancel_scope.cancel()
