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
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol

import trio

from edge.http11 import IncomingRequest, Relay, RequestBody, ResponseWriter
from edge.metrics import EdgeMetrics
from edge.routes import RouteTable
from edge.tcp_access import is_tcp_request, is_tcp_stream, relay_tcp_over_websocket, tcp_head
from edge.tunnels import TunnelRegistry
from tunnel.bounded_memo import BoundedMemo
from tunnel.errors import SessionClosed, SessionDraining, StreamLimitReached, StreamReset
from tunnel.protocol import ErrorCode, Head
from tunnel.protocol.frames import shared_name
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
BODY_CHUNK = 256 * 1024
"""Pieces of a request or response body: large, so a bulk transfer pays per piece rarely."""
_RELAY_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, StreamReset, SessionClosed)
_RESET_ERROR_KINDS: dict[int, str] = {
    ErrorCode.ORIGIN_TIMEOUT: "origin_timeout",
    ErrorCode.ORIGIN_UNREACHABLE: "origin_unreachable",
    ErrorCode.NO_INGRESS: "no_ingress",
    ErrorCode.ACCESS_DENIED: "access_denied_by_connector",
}


Guard = Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]
"""``await guard(work)`` runs a long-lived relay, cancelling it once its Access grant ends."""


class AccessGrant(Protocol):
    """What the Access layer lets through: the identity claims for the stream head, and a
    guard that runs a long-lived relay only while the grant still holds (None when nothing
    can end the grant early)."""

    @property
    def identity(self) -> dict[str, object] | None: ...

    @property
    def guard(self) -> Guard | None: ...


class RequestAuthorizer(Protocol):
    """The Access layer's hook, run before routing (its endpoints live on every host): a
    grant to forward with, or None when it answered the request itself."""

    async def __call__(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> AccessGrant | None: ...


class RemoteForward(Protocol):
    """Answers a request through another edge that holds the tunnel; False when none could
    (``edge.cluster_forward.HopClient.forward`` bound to the cluster's view)."""

    async def __call__(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        tunnel_id: str,
        head: dict[str, object],
        guard: Guard | None,
    ) -> bool: ...


class Proxy:
    def __init__(
        self,
        routes: Callable[[], RouteTable],
        registry: TunnelRegistry,
        *,
        authorize: RequestAuthorizer | None = None,
        metrics: EdgeMetrics | None = None,
        forward: RemoteForward | None = None,
    ) -> None:
        self._routes = routes
        self._registry = registry
        self._authorize = authorize
        self._metrics = metrics or EdgeMetrics()
        self._forward = forward

    async def handle(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> Relay | None:
        """Answer ``request`` through its tunnel; after a ``101``, the relay that carries the
        WebSocket, for the connection to run once this frame is gone (http_messages.Handler)."""
        grant: AccessGrant | None = None
        if self._authorize is not None:
            grant = await self._authorize(request, body, respond)
            if grant is None:
                return None
        route = self._routes().lookup(request.host)
        if route is None:
            await respond.error(404, "Unknown host", f"No application is served at {request.host}.",
                                code="unknown_host")
            return None
        identity = grant.identity if grant is not None else None
        head: dict[str, object]
        if is_tcp_request(request):
            head = tcp_head(request, identity)
        else:
            head = {
                "kind": "http",
                "method": request.method,
                "target": request.target,
                "host": request.host,
                "scheme": request.scheme,
                # The head lives as long as its stream (a WebSocket: days): names are shared
                # among heads, and a pair is a tuple, which costs less than a list.
                "headers": [
                    _HEAD_PAIRS.get((n, v)) or _head_pair(n, v) for n, v in request.headers
                ],
                "client": request.client_ip,
                "identity": identity,
            }
        # A request without a body opens its stream already ended: no DATA frame, no pump.
        bodiless = not request.has_body and not request.is_websocket_upgrade
        stream = await self._open(route.tunnel_id, head, end_stream=bodiless)
        guard = grant.guard if grant is not None and request.is_websocket_upgrade else None
        if stream is None and self._forward is not None:
            # Another edge of the cluster may hold the tunnel (edge.cluster_forward).
            if await self._forward(request, body, respond, route.tunnel_id, head, guard):
                return None
        if stream is None:
            self._metrics.error("tunnel_offline")
            await respond.error(
                502,
                "Tunnel offline",
                f"The tunnel {route.tunnel_name!r} that serves {request.host} has no live "
                "connection. Check that its connector is running.",
                code="tunnel_offline",
                tunnel=route.tunnel_name,
            )
            return None
        if guard is not None and is_tcp_stream(stream):
            # Raw TCP is relayed inside the exchange (edge.tcp_access): guard all of it.
            async with stream:
                await guard(partial(self._exchange_tcp, request, body, respond, stream))
            return None
        return await self._exchange_owning(request, body, respond, stream, guard)

    async def serve_head(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        tunnel_id: str,
        head: dict[str, object],
    ) -> None:
        """Serve a request another edge already authorized and forwarded (its signed head),
        on this edge's own connections only: a request crosses at most one hop."""
        bodiless = not request.has_body and not request.is_websocket_upgrade
        stream = await self._open(tunnel_id, head, end_stream=bodiless)
        if stream is None:
            self._metrics.error("tunnel_offline")
            await respond.error(502, "Tunnel offline",
                                "This edge no longer holds a connection of the tunnel.",
                                code="tunnel_offline")
            return
        # The internal listener's handler (edge.cluster_forward) hands no relay back: run it.
        relay_upgraded = await self._exchange_owning(request, body, respond, stream, None)
        if relay_upgraded is not None:
            await relay_upgraded()

    async def _open(
        self, tunnel_id: str, head: dict[str, object], *, end_stream: bool = False
    ) -> TunnelStream | None:
        # A connection may start draining or die between pick() and open_stream(); try the
        # others before calling the tunnel offline. A connector that starts draining refuses
        # streams it had not seen yet (REFUSED_STREAM: never processed); when the head was all
        # a stream carried, it is retried on another connection, so a rolling restart of
        # connector replicas loses no request.
        for _attempt in range(4):
            conn = self._registry.pick(tunnel_id)
            if conn is None:
                return None
            try:
                stream = await conn.session.open_stream(head, end_stream)
            except (SessionClosed, SessionDraining, StreamLimitReached):
                continue
            if end_stream and await _refused_unprocessed(stream):
                await stream.aclose()
                continue
            return stream
        return None

    async def _exchange_owning(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        stream: TunnelStream,
        guard: Guard | None,
    ) -> Relay | None:
        """The exchange on ``stream``, closed here unless a ``101`` hands it to the relay
        returned (which closes it, under ``guard`` when there is one)."""
        client: trio.abc.Stream | None = None
        try:
            client = await self._exchange(request, body, respond, stream)
        except BaseException:
            stream.reset(ErrorCode.CANCEL)
            raise
        finally:
            if client is None:
                # Closed without a checkpoint of its own: the connection reads its next
                # request next, and that is where it yields.
                stream.close()
        if client is None:
            return None
        return partial(relay, client, stream, guard)

    async def _exchange_tcp(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        stream: TunnelStream,
    ) -> None:
        # Raw TCP never hands back a client stream: relay_tcp_over_websocket relays in place.
        await self._exchange(request, body, respond, stream)

    async def _exchange(
        self,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        stream: TunnelStream,
    ) -> trio.abc.Stream | None:
        """Forward the request and answer it; the client's stream when it was upgraded."""
        if not _needs_pump(request):
            # An upgrade request has no body (its stream stays open for the relay); a request
            # without a body went out with its head. Nothing runs beside the answer.
            response, failure = await self._response_head(request, respond, stream)
            if response is not None:
                return await self._relay_response(request, respond, stream, response)
            if failure is not None:
                await failure()
            return None
        # A failure page is sent after the nursery: once its scope is cancelled (to stop the
        # request pump) nothing more can be awaited inside it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_request, body, stream)
            response, failure = await self._response_head(request, respond, stream)
            if response is not None:
                await self._relay_response(request, respond, stream, response)
            nursery.cancel_scope.cancel()
        if failure is not None:
            await failure()
        return None  # a request with a body is no upgrade: nothing was handed over

    async def _response_head(
        self, request: IncomingRequest, respond: ResponseWriter, stream: TunnelStream
    ) -> tuple[Head | None, Callable[[], Awaitable[None]] | None]:
        """The response head, or the page to answer with when the stream failed first."""
        if stream.response_head is not None:
            return stream.response_head, None  # _open already waited for it (no body to pump)
        try:
            return await stream.receive_head(), None
        except StreamReset as reset:
            return None, partial(self._origin_error, request, respond, reset.code)
        except SessionClosed:
            self._metrics.error("tunnel_connection_lost")
            return None, partial(
                respond.error, 502, "Tunnel connection lost",
                "The tunnel connection closed before the origin answered.",
                code="tunnel_offline", tunnel=self._tunnel_name(request),
            )

    def _tunnel_name(self, request: IncomingRequest) -> str | None:
        route = self._routes().lookup(request.host)
        return route.tunnel_name if route is not None else None

    async def _relay_response(
        self,
        request: IncomingRequest,
        respond: ResponseWriter,
        stream: TunnelStream,
        response: Head,
    ) -> trio.abc.Stream | None:
        """Send the origin's answer; after a ``101``, the upgraded client stream to relay."""
        status = int(response.get("status", 502))
        if status == 200 and request.is_websocket_upgrade and is_tcp_stream(stream):
            await relay_tcp_over_websocket(request, respond, stream)
            return None
        raw_headers = response.get("headers") or []
        assert isinstance(raw_headers, list)
        if status == 101 and request.is_websocket_upgrade:
            return await respond.upgrade(101, _encoded_headers(raw_headers))
        headers = _encoded_headers(raw_headers, skip=HOP_BY_HOP_RESPONSE)
        # Whatever of the body already arrived goes out with the head; a small response that
        # arrived whole (the usual case) is answered in one write.
        first = stream.take_buffered(BODY_CHUNK)
        if first:
            self._metrics.bytes_sent(len(first))
        if stream.remote_finished:
            await respond.start(status, headers, body=first, end=True)
            return None
        await respond.start(status, headers, body=first)
        try:
            while True:
                chunk = await stream.receive_some(BODY_CHUNK)
                if not chunk:
                    break
                await respond.send(chunk)
                self._metrics.bytes_sent(len(chunk))
        except (StreamReset, SessionClosed):
            # Headers are out: the only honest signal left is an aborted connection.
            self._metrics.error("response_aborted")
            log.info("response body aborted host=%s stream=%s", request.host, stream.stream_id)
            raise
        await respond.end()
        return None

    async def _pump_request(self, body: RequestBody, stream: TunnelStream) -> None:
        try:
            while True:
                chunk = await body.receive_some(BODY_CHUNK)
                if not chunk:
                    break
                self._metrics.bytes_received(len(chunk))
                await stream.send_all(chunk)
            await stream.send_eof()
        except (StreamReset, SessionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def _origin_error(
        self, request: IncomingRequest, respond: ResponseWriter, code: int
    ) -> None:
        self._metrics.error(_RESET_ERROR_KINDS.get(code, "stream_reset"))
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


# Requests and responses repeat their headers: a pair converted once (text for the tunnel head,
# bytes for the client) is looked up afterwards. Bounded in entries and in the size of a pair.
_PAIR_MEMO_ENTRIES = 2048
_PAIR_MEMO_BYTES = 2048
_HEAD_PAIRS: BoundedMemo[tuple[bytes, bytes], tuple[str, str]] = BoundedMemo(
    _PAIR_MEMO_ENTRIES, _PAIR_MEMO_BYTES
)
_RESPONSE_PAIRS: BoundedMemo[tuple[str, str], tuple[bytes, bytes, str]] = BoundedMemo(
    _PAIR_MEMO_ENTRIES, _PAIR_MEMO_BYTES
)


def _head_pair(name: bytes, value: bytes) -> tuple[str, str]:
    """A request header as the tunnel head carries it (names shared among heads)."""
    pair = (shared_name(name.decode("latin-1")), value.decode("latin-1"))
    return _HEAD_PAIRS.remember((name, value), pair, len(name) + len(value))


def _response_pair(name: object, value: object) -> tuple[bytes, bytes, str]:
    """A response header from the tunnel head: its bytes, and its lower-case name."""
    text_name, text_value = str(name), str(value)
    pair = (text_name.encode("latin-1"), text_value.encode("latin-1"), text_name.lower())
    if type(name) is type(value) is str:  # else the text is not what a lookup would find
        _RESPONSE_PAIRS.remember((name, value), pair, len(name) + len(value))
    return pair


def _encoded_headers(
    raw_headers: list[Any], skip: frozenset[str] = frozenset()
) -> Sequence[tuple[bytes, bytes]]:
    """The response head's pairs as the client gets them, less the names in ``skip``; a list of
    pairs seen before (the header table hands the same pairs again) is looked up."""
    try:
        key = (tuple(raw_headers), skip)
        known_list = _RESPONSE_LISTS.get(key)
    except TypeError:  # not text pairs (the head was checked for shape, not for types)
        key, known_list = None, None
    if known_list is not None:
        return known_list
    encoded = tuple(_encode_pairs(raw_headers, skip))
    if key is not None:
        _RESPONSE_LISTS.remember(key, encoded, sum(len(n) + len(v) for n, v in encoded))
    return encoded


_RESPONSE_LISTS: BoundedMemo[tuple[object, ...], tuple[tuple[bytes, bytes], ...]] = (
    BoundedMemo(1024, 8192)
)


def _encode_pairs(
    raw_headers: list[Any], skip: frozenset[str]
) -> list[tuple[bytes, bytes]]:
    known = _RESPONSE_PAIRS.get
    encoded = []
    for n, v in raw_headers:
        try:
            pair = known((n, v))
        except TypeError:  # not text (the head was checked for shape, not for types)
            pair = None
        if pair is None:
            pair = _response_pair(n, v)
        if pair[2] not in skip:
            encoded.append((pair[0], pair[1]))
    return encoded


def _needs_pump(request: IncomingRequest) -> bool:
    return request.has_body and not request.is_websocket_upgrade


async def _refused_unprocessed(stream: TunnelStream) -> bool:
    """Wait for the response head; True if the connector refused the stream unprocessed.
    Any other outcome stays on the stream for the exchange to report."""
    try:
        await stream.receive_head()
    except StreamReset as reset:
        return reset.code == ErrorCode.REFUSED_STREAM
    except SessionClosed:
        return False
    return False


async def relay(client: trio.abc.Stream, stream: TunnelStream, guard: Guard | None = None) -> None:
    """Copy raw bytes both ways (a WebSocket after 101) until both directions end, under
    ``guard`` when the Access grant has one; then close both streams.

    An idle WebSocket may stay open for days and the edge may hold thousands, so a relay holds
    little: it runs once the handler chain is gone (edge.http_messages.Handler), the calling
    task copies the tunnel's bytes itself and only the other direction gets a task, and the
    copies are plain functions, not closures.
    """
    async with stream, client, trio.open_nursery() as nursery:
        cancel_all = nursery.cancel_scope
        nursery.start_soon(_client_to_tunnel, client, stream, cancel_all)
        if guard is None:
            await _tunnel_to_client(stream, client, cancel_all)
        else:
            await guard(partial(_tunnel_to_client, stream, client, cancel_all))
            cancel_all.cancel()  # the grant ended, or the copy did


async def _client_to_tunnel(
    client: trio.abc.Stream, stream: TunnelStream, cancel_all: trio.CancelScope
) -> None:
    try:
        while chunk := await client.receive_some(RELAY_CHUNK):
            await stream.send_all(chunk)
        await stream.send_eof()
    except _RELAY_ERRORS:
        cancel_all.cancel()


async def _tunnel_to_client(
    stream: TunnelStream, client: trio.abc.Stream, cancel_all: trio.CancelScope
) -> None:
    try:
        while chunk := await stream.receive_some(RELAY_CHUNK):
            await client.send_all(chunk)
    except _RELAY_ERRORS:
        pass
    cancel_all.cancel()
