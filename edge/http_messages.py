"""The objects one HTTP/1.1 exchange hands to a handler: request, body reader, response writer.

``edge.http11`` owns the connection loop and builds these per request; handlers (the proxy, the
Access endpoints, the ops listener) only ever see this module's types. The response writer
lives in ``edge.http_response`` and is re-exported here.

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

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from edge.canonical import BadRequest, RequestRejected
from edge.forwarding import normalise_header_name
from edge.http_response import (
    ResponseStateError,
    ResponseWriter,
    UpgradedStream,
    error_page_headers,
    reason_phrase,
)
from tunnel.fd_io import receive_from_fd, write_without_waiting

__all__ = [
    "ClientDisconnected",
    "ClientIO",
    "Handler",
    "HeadersTooLarge",
    "HttpLimits",
    "IncomingRequest",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "Relay",
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
    chunked: bool = False
    close_requested: bool = False

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (a request with no framing header has none)."""
        return self.chunked or bool(self.content_length)

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
    """The socket side of one connection: bytes not yet parsed, and serialised writes."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.buffer = bytearray()
        self.eof = False
        self._broken = False
        self._send_lock = trio.StrictFIFOLock()
        self._writers = 0  # writes started and not finished; 0 lets a write skip the lock
        # A plain TCP connection is first written without trio's machinery (no timeout scope,
        # no wait): a response usually fits the socket buffer at once.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None

    @property
    def fd(self) -> int | None:
        """The plain TCP socket's descriptor, read and written directly; None for other
        streams (TLS) and once the connection is closing."""
        return self._fd

    def closing(self) -> None:
        """The connection is about to close: write only through the stream from now on."""
        self._fd = None

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        fd = self._fd
        if fd is None:
            try:
                data = bytes(await self.stream.receive_some(max_bytes))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientDisconnected("client connection broke") from exc
        else:
            data = await self._receive_fd(fd, max_bytes)
        if not data:
            self.eof = True
        return data

    async def _receive_fd(self, fd: int, max_bytes: int) -> bytes:
        try:
            return await receive_from_fd(fd, max_bytes)
        except trio.ClosedResourceError as exc:
            raise ClientDisconnected("client connection closed") from exc
        except OSError as exc:
            raise ClientDisconnected("client connection broke") from exc

    async def send(self, data: bytes) -> None:
        if not data:
            return
        sent = 0
        if self._fd is not None and not self._writers:
            # The usual case: nobody is mid-write and the socket buffer takes it all at once,
            # with no lock and no scheduling round.
            if self._broken:
                raise ClientDisconnected("an earlier write to the client failed")
            try:
                sent = write_without_waiting(self._fd, data)
            except OSError as exc:
                self._broken = True
                raise ClientDisconnected("client connection broke") from exc
            if sent == len(data):
                return
        self._writers += 1  # from here on, later writes queue behind this one
        try:
            await self._send_locked(memoryview(data)[sent:] if sent else data)
        finally:
            self._writers -= 1

    async def _send_locked(self, data: bytes | memoryview) -> None:
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
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
        finally:
            lock.release()


class RequestBody:
    """The request body, decoded from the socket as the handler asks for it.

    Nothing is read ahead: the socket is read only when the decoder needs more bytes for the
    next piece, so memory per request stays at one read however large the body is. Chunk
    lines must end in CRLF and, with the trailers, stay within ``max_header_bytes``.
    """

    def __init__(
        self, io: ClientIO, *, length: int | None, chunked: bool, expects_continue: bool
    ) -> None:
        self._io = io
        self._chunked = chunked
        self._left = 0 if chunked else length or 0
        self._chunk_state = _CHUNK_SIZE_LINE
        self._trailer_bytes = 0
        self._expects_continue = expects_continue
        self._pending = b""
        self._received = 0
        self._failure: Exception | None = None
        self._receiving = False
        self.complete = not chunked and not self._left
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
                self._pending = await self._next_data(max_bytes)
            except (RequestRejected, ClientDisconnected) as exc:
                self._failure = exc
                raise
            finally:
                self._receiving = False
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def _next_data(self, max_bytes: int) -> bytes:
        if self.complete:
            return b""
        io = self._io
        if self._expects_continue:
            self._expects_continue = False
            if not self.response_started and not io.buffer:
                await io.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        limits = io.limits
        while True:
            data = self._decode()
            if data is not None:
                return self._counted(data)
            if io.eof:
                raise ClientDisconnected("client closed the connection mid-body")
            # A body with a length is read in the pieces the handler asks for (the proxy asks
            # for 256 KiB: a quarter of the per-piece work of 64 KiB reads), and a piece that
            # is all body is handed on as it came, without a trip through the buffer.
            direct = not self._chunked and not io.buffer
            size = min(self._left, max(max_bytes, READ_SIZE)) if direct else READ_SIZE
            with trio.move_on_after(limits.body_timeout) as scope:
                more = await io.receive(size)
            if scope.cancelled_caught:
                raise RequestTimeout("the request body stalled")
            if direct and more:
                self._left -= len(more)
                self.complete = not self._left
                return self._counted(more)
            io.buffer += more

    def _counted(self, data: bytes) -> bytes:
        """``data``, once counted against ``max_body_bytes`` (413 beyond it)."""
        self._received += len(data)
        cap = self._io.limits.max_body_bytes
        if cap is not None and self._received > cap:
            raise PayloadTooLarge("the request body is larger than allowed")
        return data

    def _decode(self) -> bytes | None:
        """The next body bytes in the buffer, ``b""`` at the end, None when more must arrive."""
        buffer = self._io.buffer
        if not self._chunked:
            if not buffer:
                return None
            size = min(self._left, len(buffer))
            data = bytes(buffer[:size])
            del buffer[:size]
            self._left -= size
            self.complete = not self._left
            return data
        limit = self._io.limits.max_header_bytes
        while True:
            state = self._chunk_state
            if state == _CHUNK_DATA:
                if not buffer:
                    return None
                size = min(self._left, len(buffer))
                data = bytes(buffer[:size])
                del buffer[:size]
                self._left -= size
                if not self._left:
                    self._chunk_state = _CHUNK_DATA_END
                return data
            line_end = buffer.find(b"\r\n", 0, limit + 2)
            if line_end == -1:
                if len(buffer) > limit or b"\n" in buffer:
                    raise BadRequest("malformed request body: bad chunk line")
                return None
            line = bytes(buffer[:line_end])
            del buffer[: line_end + 2]
            if b"\r" in line or b"\n" in line:
                raise BadRequest("malformed request body: bare CR or LF in a chunk line")
            if state == _CHUNK_DATA_END:
                if line:
                    raise BadRequest("malformed request body: chunk longer than its size")
                self._chunk_state = _CHUNK_SIZE_LINE
            elif state == _CHUNK_SIZE_LINE:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise BadRequest("malformed request body: bad chunk size")
                self._left = int(match.group(1), 16)
                self._chunk_state = _CHUNK_DATA if self._left else _CHUNK_TRAILERS
            elif line:  # a trailer line: checked, counted, dropped
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > limit or _TRAILER.fullmatch(line) is None:
                    raise BadRequest("malformed request body: bad trailer")
            else:
                self.complete = True
                return b""

    def drain_buffered(self) -> None:
        """Consume what is already buffered without reading the socket (keep-alive recovery)."""
        if self._failure is not None:
            return
        self._pending = b""
        while not self.complete:
            try:
                if not self._decode():
                    return
            except RequestRejected:
                return


_CHUNK_SIZE_LINE = 0
_CHUNK_DATA = 1
_CHUNK_DATA_END = 2
_CHUNK_TRAILERS = 3
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_TRAILER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")


Relay = Callable[[], Awaitable[None]]
"""What carries an upgraded connection once its handler has returned (see ``Handler``)."""

Handler = Callable[[IncomingRequest, RequestBody, ResponseWriter], Awaitable[Relay | None]]
"""``await handler(request, body, respond)``: answer one request through ``respond``.

A handler that answered with ``respond.upgrade()`` may return a ``Relay`` instead of relaying
itself: the connection runs it after the handler's frames are gone, so an idle WebSocket,
which may last days, keeps alive only what the relay holds (its two streams), not the request,
its headers and every frame of the handler chain. The relay owns the upgraded stream: it runs
only after a ``101``, and the connection closes when it returns.
"""
