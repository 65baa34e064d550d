"""The objects one HTTP/1.1 exchange hands to a handler: request, body reader, response writer.

``edge.http11`` owns the connection loop and builds these per request; handlers (the proxy, the
Access endpoints, the ops listener) only ever see this module's types.

Errors::

    edge.canonical.RequestRejected  status, code, detail: answered with a standard page
    ├── BadRequest                  400  bad syntax, ambiguous host or path, conflicting hosts
    ├── RequestTimeout              408  head not complete within header_timeout; body stalled
    ├── PayloadTooLarge             413  body above max_body_bytes
    ├── MisdirectedRequest          421  Host does not match the TLS server name (SNI)
    ├── HeadersTooLarge             431  head above max_header_bytes or max_headers
    └── VersionNotSupported         505  anything but HTTP/1.0 and HTTP/1.1
    ClientDisconnected              the client went away; nothing left to answer
    ResponseStateError              a handler used the ResponseWriter out of order

A handler may let any ``RequestRejected`` escape (``RequestBody.receive_some`` raises 408 and
413 this way): the connection answers with its status if no response has started yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from edge.canonical import BadRequest, RequestRejected
from edge.forwarding import header_tokens, normalise_header_name
from edge.pages import render_error, wants_json

__all__ = [
    "ClientDisconnected",
    "ClientIO",
    "Handler",
    "HeadersTooLarge",
    "HttpLimits",
    "IncomingRequest",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "RequestBody",
    "RequestTimeout",
    "ResponseStateError",
    "ResponseWriter",
    "UpgradedStream",
    "VersionNotSupported",
    "error_page_headers",
    "reason_phrase",
]

READ_SIZE = 65536


class RequestTimeout(RequestRejected):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(RequestRejected):
    status = 413
    code = "payload_too_large"


class MisdirectedRequest(RequestRejected):
    status = 421
    code = "misdirected_request"


class HeadersTooLarge(RequestRejected):
    status = 431
    code = "headers_too_large"


class VersionNotSupported(RequestRejected):
    status = 505
    code = "http_version_not_supported"


class ClientDisconnected(Exception):
    """The client's connection broke or closed mid-request; no answer can reach it."""


class ResponseStateError(RuntimeError):
    """A response method was called in the wrong order (start twice, send before start...)."""


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits; each one bounds memory or time a single client can hold.

    max_header_bytes: request line plus headers (431 beyond; also caps chunk and trailer lines)
    max_headers:      header lines per request (431 beyond)
    header_timeout:   seconds to deliver a complete head, counted from the connection's start
                      or from a kept-alive request's first byte (408: slowloris)
    idle_timeout:     seconds a kept-alive connection may wait for its next request (then closed)
    body_timeout:     seconds allowed between two pieces of a request body (408)
    send_timeout:     seconds a client may take to accept one write of our response (closed)
    max_body_bytes:   request body cap (413), ``None`` for no cap (bodies are streamed)
    """

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    max_body_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_headers"):
            if getattr(self, name) < 1:
                raise ValueError(f"HttpLimits.{name} must be positive")
        for name in ("header_timeout", "idle_timeout", "body_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpLimits.{name} must be a positive number of seconds")
        if self.max_body_bytes is not None and self.max_body_bytes < 0:
            raise ValueError("HttpLimits.max_body_bytes must be >= 0 or None")


@dataclass
class IncomingRequest:
    """A request as the rest of the edge sees it: canonical, cleaned, ready to route.

    ``headers`` already lacks hop-by-hop and untrusted forwarding headers and carries the edge's
    ``X-Forwarded-For``/``X-Forwarded-Proto``; the Access layer may replace the list (strip
    identity headers, add its own) before the request is forwarded.
    """

    method: str
    host: str
    port: int | None
    path: str
    query: str | None
    headers: list[tuple[bytes, bytes]]
    client_ip: str
    peer_ip: str
    scheme: str
    http_version: str
    is_websocket_upgrade: bool
    expects_continue: bool
    content_length: int | None
    request_id: str

    @property
    def target(self) -> str:
        """What the origin receives: the canonical path plus the query exactly as sent."""
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (compared normalised), or ``None``."""
        wanted = normalise_header_name(name)
        for header, value in self.headers:
            if normalise_header_name(header) == wanted:
                return value
        return None


class ClientIO:
    """The socket side of one connection: bytes not yet handed to h11, and serialised writes."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.buffer = bytearray()
        self.eof = False
        self._broken = False
        self._send_lock = trio.StrictFIFOLock()

    async def receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientDisconnected("client connection broke") from exc
        if not data:
            self.eof = True
        return bytes(data)

    async def send(self, data: bytes) -> None:
        if not data:
            return
        async with self._send_lock:
            if self._broken:
                raise ClientDisconnected("an earlier write to the client failed")
            self._broken = True  # until the write completes: a cancelled write breaks the stream
            with trio.move_on_after(self.limits.send_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ClientDisconnected("client connection broke") from exc
            if scope.cancelled_caught:
                raise ClientDisconnected("client stopped reading the response")
            self._broken = False


class RequestBody:
    """The request body, streamed from the socket through h11 as the handler asks for it.

    Nothing is read ahead: the socket is read only when h11 needs more bytes for the next
    piece, so memory per request stays at one read however large the body is.
    """

    def __init__(self, io: ClientIO, h11_conn: h11.Connection) -> None:
        self._io = io
        self._h11 = h11_conn
        self._pending = b""
        self._received = 0
        self._failure: Exception | None = None
        self._receiving = False
        self.complete = False
        self.response_started = False

    async def receive_some(self, max_bytes: int = READ_SIZE) -> bytes:
        """Up to ``max_bytes`` of body, ``b""`` at the end; sends ``100 Continue`` on first use.

        Raises ``RequestTimeout`` (408), ``PayloadTooLarge`` (413), ``BadRequest`` (400) or
        ``ClientDisconnected``; once it has raised, every later call raises the same error.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self._receiving:
            raise trio.BusyResourceError("another task is already reading the request body")
        if self._failure is not None:
            raise self._failure
        if not self._pending:
            self._receiving = True
            try:
                self._pending = await self._next_data()
            except (RequestRejected, ClientDisconnected) as exc:
                self._failure = exc
                raise
            finally:
                self._receiving = False
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def _next_data(self) -> bytes:
        if self.complete:
            return b""
        if self._h11.they_are_waiting_for_100_continue and not self.response_started:
            interim = h11.InformationalResponse(
                status_code=100, headers=[], reason=reason_phrase(100)
            )
            await self._io.send(self._h11.send(interim) or b"")
        limits = self._io.limits
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._io.eof:
                    raise ClientDisconnected("client closed the connection mid-body") from None
                raise BadRequest(f"malformed request body: {exc}") from None
            if event is h11.NEED_DATA:
                with trio.move_on_after(limits.body_timeout) as scope:
                    data = await self._io.receive()
                if scope.cancelled_caught:
                    raise RequestTimeout("the request body stalled")
                self._h11.receive_data(data)
            elif isinstance(event, h11.Data):
                self._received += len(event.data)
                if limits.max_body_bytes is not None and self._received > limits.max_body_bytes:
                    raise PayloadTooLarge("the request body is larger than allowed")
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self.complete = True
                return b""
            else:
                raise ClientDisconnected("client closed the connection during the body")

    def drain_buffered(self) -> None:
        """Consume what h11 already holds without reading the socket (keep-alive recovery)."""
        if self._failure is not None:
            return
        while not self.complete:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self.complete = True
            elif not isinstance(event, h11.Data):
                return


class ResponseWriter:
    """How a handler answers: a normal response, an error page, or a protocol upgrade."""

    def __init__(
        self,
        io: ClientIO,
        h11_conn: h11.Connection,
        request: IncomingRequest,
        body: RequestBody,
        *,
        upgrade_requested: bool,
    ) -> None:
        self._io = io
        self._upgrade_requested = upgrade_requested
        self._h11 = h11_conn
        self._request = request
        self._body = body
        self._started = False
        self._status = 0
        self._bodiless = False
        self.finished = False
        self.upgraded = False
        self.must_close = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def status(self) -> int:
        """The status sent, 0 before ``start``."""
        return self._status

    def _begin(self, status: int) -> None:
        if self._started:
            raise ResponseStateError("the response has already started")
        self._started = True
        self._body.response_started = True
        self._status = status

    async def start(self, status: int, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Send the status line and headers; framing (length or chunked) follows the headers."""
        if not 200 <= status <= 999:
            raise ResponseStateError("use upgrade() for 101; other 1xx answers are not supported")
        self._begin(status)
        nominated = header_tokens(headers, b"connection")
        if b"close" in nominated:
            self.must_close = True
        clean = [
            (name, value)
            for name, value in headers
            if (normalised := normalise_header_name(name)) not in _RESPONSE_HOP_BY_HOP
            and normalised not in nominated
        ]
        if self.must_close:
            clean.append((b"Connection", b"close"))
        self._bodiless = self._request.method == "HEAD" or status in (204, 304)
        await self._send_event(
            h11.Response(status_code=status, headers=clean, reason=reason_phrase(status))
        )

    async def send(self, data: bytes) -> None:
        if not self._started or self.finished or self.upgraded:
            raise ResponseStateError("send() needs a started, unfinished response")
        if data and not self._bodiless:
            await self._send_event(h11.Data(data=data))

    async def end(self) -> None:
        if not self._started or self.finished or self.upgraded:
            raise ResponseStateError("end() needs a started, unfinished response")
        await self._send_event(h11.EndOfMessage())
        self.finished = True

    async def error(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        *,
        code: str | None = None,
        tunnel: str | None = None,
    ) -> None:
        """Answer with the standard page (JSON when the client prefers it); closes afterwards."""
        page = render_error(
            status,
            code=code,
            title=title,
            detail=detail,
            host=self._request.host,
            request_id=self._request.request_id,
            tunnel=tunnel,
            as_json=wants_json(self._request.header(b"accept")),
        )
        headers = [
            *error_page_headers(page.content_type, len(page.body), self._request.request_id),
            (b"Connection", b"close"),
        ]
        await self.start(status, headers)
        await self.send(page.body)
        await self.end()

    async def upgrade(
        self, status: int = 101, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> trio.abc.Stream:
        """Send ``101`` and hand over the raw connection; it is no longer HTTP afterwards.

        The returned stream first yields bytes the client sent after its request, then reads the
        socket. It stays valid until the handler returns; the connection closes after that.
        """
        if status != 101:
            raise ResponseStateError("upgrade() sends 101 Switching Protocols")
        if not self._upgrade_requested:
            raise ResponseStateError("the request did not ask for an upgrade")
        while await self._body.receive_some():
            pass
        self._begin(101)
        await self._send_event(
            h11.InformationalResponse(
                status_code=101, headers=list(headers), reason=reason_phrase(101)
            )
        )
        self.upgraded = True
        leftover, _closed = self._h11.trailing_data
        return UpgradedStream(self._io.stream, leftover)

    async def _send_event(self, event: h11.Event) -> None:
        try:
            data = self._h11.send(event)
        except h11.LocalProtocolError as exc:
            self.must_close = True
            raise ResponseStateError(f"invalid response: {exc}") from None
        if data is not None:
            await self._io.send(data)


_RESPONSE_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class UpgradedStream(trio.abc.Stream):
    """The connection after ``101``: already-buffered bytes first, then the socket."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            size = len(self._buffered) if max_bytes is None else max_bytes
            chunk, self._buffered = self._buffered[:size], self._buffered[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def error_page_headers(
    content_type: bytes, length: int, request_id: str
) -> list[tuple[bytes, bytes]]:
    return [
        (b"Content-Type", content_type),
        (b"Content-Length", str(length).encode("ascii")),
        (b"Cache-Control", b"no-store"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"X-Request-Id", request_id.encode("ascii")),
    ]


Handler = Callable[[IncomingRequest, RequestBody, ResponseWriter], Awaitable[None]]
"""``await handler(request, body, respond)``: answer one request through ``respond``."""
