"""Forwards one public request over a tunnel stream, streaming both ways.

Nothing here buffers a whole body: the request body is pumped into the stream while the
response is read, each side held back by the stream's flow-control credit. A failure is mapped
to the page that says where it happened: the tunnel (no live connection, the connection broke)
or the origin (refused, timed out), so an operator knows which side to look at.

    failure                              status  page
    no route for the host                404     unknown host
    tunnel has no live connection        502     tunnel offline, names the tunnel
    connection lost mid-request          502     tunnel connection lost
    origin refused / unreachable         502     origin unreachable
    origin timed out                     504     origin timeout
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from edge.http11 import IncomingRequest, RequestBody, ResponseWriter
from edge.routes import RouteTable
from edge.tunnels import TunnelRegistry
from tunnel.errors import SessionClosed, SessionDraining, StreamLimitReached, StreamReset
from tunnel.protocol import ErrorCode
from tunnel.streams import TunnelStream

log = logging.getLogger(__name__)

# Response headers that describe the hop between connector and edge, not the response itself.
HOP_BY_HOP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
RELAY_CHUNK = 65536


class RequestAuthorizer(Protocol):
    """The Access layer's hook: returns the identity to send, or answers the request itself."""

    async def __call__(
        self, request: IncomingRequest, respond: ResponseWriter
    ) -> tuple[bool, dict[str, object] | None]: ...


class Proxy:
    def __init__(
        self,
        routes: Callable[[], RouteTable],
        registry: TunnelRegistry,
        *,
        authorize: RequestAuthorizer | None = None,
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._authorize = authorize

    async def handle(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        route = self._routes().lookup(request.host)
        if route is None:
            await respond.error(404, "Unknown host", f"No application is served at {request.host}.",
                                code="unknown_host")
            return
        identity: dict[str, object] | None = None
        if self._authorize is not None:
            proceed, identity = await self._authorize(request, respond)
            if not proceed:
                return
        head: dict[str, object] = {
            "kind": "http",
            "method": request.method,
            "target": request.target,
            "host": request.host,
            "scheme": request.scheme,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
            "client": request.client_ip,
            "identity": identity,
        }
        stream = await self._open(route.tunnel_id, head)
        if stream is None:
            await respond.error(
                502,
                "Tunnel offline",
                f"The tunnel {route.tunnel_name!r} that serves {request.host} has no live "
                "connection. Check that its connector is running.",
                code="tunnel_offline",
                tunnel=route.tunnel_name,
            )
            return
        async with stream:
            await self._exchange(request, body, respond, stream)

    async def _open(self, tunnel_id: str, head: dict[str, object]) -> TunnelStream | None:
        # A connection may start draining or die between pick() and open_stream(); try the
        # others before calling the tunnel offline.
        for _attempt in range(4):
            conn = self._registry.pick(tunnel_id)
            if conn is None:
                return None
            try:
                return await conn.session.open_stream(head)
            except (SessionClosed, SessionDraining, StreamLimitReached):
                continue
        return None

    async def _exchange(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        stream: TunnelStream,
    ) -> None:
        async with trio.open_nursery() as nursery:
            if not request.is_websocket_upgrade:
                # An upgrade request has no body; its stream stays open for the relay.
                nursery.start_soon(self._pump_request, body, stream)
            try:
                response = await stream.receive_head()
            except StreamReset as reset:
                nursery.cancel_scope.cancel()
                await self._origin_error(request, respond, reset.code)
                return
            except SessionClosed:
                nursery.cancel_scope.cancel()
                await respond.error(502, "Tunnel connection lost",
                                    "The tunnel connection closed before the origin answered.")
                return
            status = int(response.get("status", 502))
            raw_headers = response.get("headers") or []
            assert isinstance(raw_headers, list)
            headers = [
                (str(n).encode("latin-1"), str(v).encode("latin-1"))
                for n, v in raw_headers
                if str(n).lower() not in HOP_BY_HOP_RESPONSE
            ]
            if status == 101 and request.is_websocket_upgrade:
                upgrade_headers = [
                    (str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in raw_headers
                ]
                client = await respond.upgrade(101, upgrade_headers)
                nursery.cancel_scope.cancel()
                await relay(client, stream)
                return
            await respond.start(status, headers)
            try:
                while True:
                    chunk = await stream.receive_some(RELAY_CHUNK)
                    if not chunk:
                        break
                    await respond.send(chunk)
            except (StreamReset, SessionClosed):
                # Headers are out: the only honest signal left is an aborted connection.
                log.info("response body aborted host=%s stream=%s", request.host, stream.stream_id)
                raise
            await respond.end()
            nursery.cancel_scope.cancel()

    async def _pump_request(self, body: RequestBody, stream: TunnelStream) -> None:
        try:
            while True:
                chunk = await body.receive_some(RELAY_CHUNK)
                if not chunk:
                    break
                await stream.send_all(chunk)
            await stream.send_eof()
        except (StreamReset, SessionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _origin_error(
        self, request: IncomingRequest, respond: ResponseWriter, code: int
    ) -> None:
        if code == ErrorCode.ORIGIN_TIMEOUT:
            await respond.error(504, "Origin timeout", code="origin_timeout", detail=
                                f"The origin behind {request.host} did not answer in time.")
        elif code == ErrorCode.ORIGIN_UNREACHABLE:
            await respond.error(502, "Origin unreachable",
                                f"The connector could not reach the origin behind {request.host}.")
        elif code == ErrorCode.NO_INGRESS:
            await respond.error(502, "No ingress rule",
                                f"The connector has no ingress rule for {request.host}.")
        elif code == ErrorCode.ACCESS_DENIED:
            await respond.error(403, "Forbidden",
                                "The connector refused the request's identity assertion.")
        else:
            await respond.error(502, "Tunnel stream reset",
                                f"The tunnel stream was reset (code {code}).")


async def relay(client: trio.abc.Stream, stream: TunnelStream) -> None:
    """Copy raw bytes both ways (WebSocket after 101, raw TCP) until both directions end."""

    async def client_to_tunnel() -> None:
        try:
            while chunk := await client.receive_some(RELAY_CHUNK):
                await stream.send_all(chunk)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, StreamReset, SessionClosed):
            nursery.cancel_scope.cancel()

    async def tunnel_to_client() -> None:
        try:
            while chunk := await stream.receive_some(RELAY_CHUNK):
                await client.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, StreamReset, SessionClosed):
            pass
        nursery.cancel_scope.cancel()

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(client_to_tunnel)
        nursery.start_soon(tunnel_to_client)
