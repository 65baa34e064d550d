"""The response side of one HTTP/1.1 exchange: the writer a handler answers through.

Kept apart from ``edge.http_messages`` (the request side: head, body decoding, limits) because
serialising a response is its own job with its own invariants: header bytes checked so an
origin's header can never split the response, framing chosen from the headers and enforced, and
the hand-over of the raw connection after ``101``. ``edge.http_messages`` re-exports every name
here, so handlers keep importing from one place.

Errors::

    ResponseStateError    a handler used the ResponseWriter out of order or gave it a bad header
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

import trio

from edge.forwarding import header_tokens, normalise_header_name
from edge.pages import render_error, wants_json
from tunnel.bounded_memo import BoundedMemo

if TYPE_CHECKING:
    from edge.http_messages import ClientIO, IncomingRequest, RequestBody

__all__ = [
    "ResponseStateError",
    "ResponseWriter",
    "UpgradedStream",
    "error_page_headers",
    "reason_phrase",
]


class ResponseStateError(RuntimeError):
    """A response method was called in the wrong order (start twice, send before start...)."""


class ResponseWriter:
    """How a handler answers: a normal response, an error page, or a protocol upgrade.

    Responses are serialised here rather than through h11: the status line, the headers and
    whatever body the handler already has go out in one write. Names and values are checked
    byte for byte (a header from an origin can never split the response), and the framing
    follows the headers: ``Content-Length`` when given (and then enforced), otherwise chunked
    for HTTP/1.1 clients and close-delimited for HTTP/1.0 ones.
    """

    def __init__(
        self,
        io: ClientIO,
        request: IncomingRequest,
        body: RequestBody,
        *,
        upgrade_requested: bool,
    ) -> None:
        self._io = io
        self._upgrade_requested = upgrade_requested
        self._request = request
        self._body = body
        self._started = False
        self._status = 0
        self._framing = _NO_BODY
        self._length_left = 0
        self.finished = False
        self.upgraded = False
        self.must_close = request.close_requested or request.http_version == "1.0"

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

    async def start(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        body: bytes = b"",
        end: bool = False,
    ) -> None:
        """Send the status line and headers; framing (length or chunked) follows the headers.

        ``body`` is sent with the head in the same write, and ``end=True`` completes the
        response there too: a small response costs one write.
        """
        if not 200 <= status <= 999:
            raise ResponseStateError("use upgrade() for 101; other 1xx answers are not supported")
        self._begin(status)
        lines = [_status_line(status)]
        lengths: set[bytes] = set()
        if not self._header_lines(headers, lines, lengths, None):
            # A Connection header names more headers to drop (rare): go again without them.
            nominated = header_tokens(headers, b"connection")
            if b"close" in nominated:
                self.must_close = True
            del lines[1:]
            lengths.clear()
            self._header_lines(headers, lines, lengths, frozenset(nominated))
        if self._request.method == "HEAD" or status in (204, 304):
            self._framing = _NO_BODY
        elif lengths:
            length = lengths.pop()
            if lengths or not length.isdigit():
                self.must_close = True
                raise ResponseStateError("invalid response: conflicting or bad Content-Length")
            self._framing = _LENGTH
            self._length_left = int(length)
        elif self._request.http_version == "1.0":
            self._framing = _UNTIL_CLOSE
            self.must_close = True
        else:
            self._framing = _CHUNKED
            lines.append(b"Transfer-Encoding: chunked")
        if self.must_close:
            lines.append(b"Connection: close")
        lines.append(b"\r\n")
        data = b"\r\n".join(lines)
        if body:
            data += self._frame(body)
        if end:
            data += self._finish()
        await self._io.send(data)

    def _header_lines(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        lines: list[bytes],
        lengths: set[bytes],
        nominated: frozenset[bytes] | None,
    ) -> bool:
        """Append the checked lines of the headers to send; False (with the lines incomplete)
        when a Connection header turned up and ``nominated`` was not given yet (None). A
        header that could split the response raises, unless it is one that is dropped anyway.
        A header list seen before (an origin repeats its answers' headers) is looked up."""
        try:
            key = (tuple(headers), nominated)
            block = _CHECKED_BLOCKS.get(key)
        except TypeError:  # bytearray or memoryview: not hashable, never remembered
            key, block = None, None
        if block is not None:
            lines.extend(block[0])
            lengths.update(block[1])
            return True
        first = len(lines)
        if not self._check_header_lines(headers, lines, lengths, nominated):
            return False
        if key is not None:
            _CHECKED_BLOCKS.remember(
                key, (tuple(lines[first:]), frozenset(lengths)),
                sum(len(line) for line in lines[first:]),
            )
        return True

    def _check_header_lines(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        lines: list[bytes],
        lengths: set[bytes],
        nominated: frozenset[bytes] | None,
    ) -> bool:
        known = _CHECKED_HEADERS.get
        dropped = nominated or frozenset()
        invalid: bytes | None = None
        connection_seen = False
        for name, value in headers:
            try:
                checked = known((name, value)) or _check_and_remember(name, value)
            except TypeError:  # bytearray or memoryview: not hashable, never remembered
                checked = _check_header(bytes(name), bytes(value))
            normalised, line = checked
            if normalised in _RESPONSE_HOP_BY_HOP or normalised in dropped:
                connection_seen = connection_seen or normalised == b"connection"
                continue
            if line is None:
                invalid = invalid or bytes(name)
                continue
            if normalised == b"content-length":
                lengths.add(line[len(name) + 2 :])
            lines.append(line)
        if connection_seen and nominated is None:
            return False
        if invalid is not None:
            self.must_close = True
            raise ResponseStateError(f"invalid response header {invalid[:64]!r}")
        return True

    async def send(self, data: bytes) -> None:
        if not self._started or self.finished or self.upgraded:
            raise ResponseStateError("send() needs a started, unfinished response")
        if data:
            framed = self._frame(data)
            if framed:
                await self._io.send(framed)

    async def end(self) -> None:
        if not self._started or self.finished or self.upgraded:
            raise ResponseStateError("end() needs a started, unfinished response")
        await self._io.send(self._finish())

    def _frame(self, data: bytes) -> bytes:
        framing = self._framing
        if framing == _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if framing == _LENGTH:
            if len(data) > self._length_left:
                self.must_close = True
                raise ResponseStateError("invalid response: too much data for Content-Length")
            self._length_left -= len(data)
            return data
        if framing == _UNTIL_CLOSE:
            return data
        return b""

    def _finish(self) -> bytes:
        if self._framing == _LENGTH and self._length_left:
            self.must_close = True
            raise ResponseStateError("invalid response: too little data for Content-Length")
        self.finished = True
        return b"0\r\n\r\n" if self._framing == _CHUNKED else b""

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
        await self.start(status, headers, body=page.body, end=True)

    async def upgrade(
        self, status: int = 101, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> trio.abc.Stream:
        """Send ``101`` and hand over the raw connection; it is no longer HTTP afterwards.

        The returned stream first yields bytes the client sent after its request, then reads the
        socket. It stays valid until the handler returns, or until the relay the handler
        returned does (``edge.http_messages.Handler``); the connection closes after that.
        """
        if status != 101:
            raise ResponseStateError("upgrade() sends 101 Switching Protocols")
        if not self._upgrade_requested:
            raise ResponseStateError("the request did not ask for an upgrade")
        while await self._body.receive_some():
            pass
        lines = [_status_line(101)]
        for name, value in headers:
            value = value.strip(b" \t")
            if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                self.must_close = True
                raise ResponseStateError(f"invalid response header {name[:64]!r}")
            lines.append(name + b": " + value)
        lines.append(b"\r\n")
        self._begin(101)
        await self._io.send(b"\r\n".join(lines))
        self.upgraded = True
        leftover = bytes(self._io.buffer)
        self._io.buffer.clear()
        return UpgradedStream(self._io.stream, leftover)


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
# Body framings of a response.
_NO_BODY = 0
_LENGTH = 1
_CHUNKED = 2
_UNTIL_CLOSE = 3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value without leading or trailing whitespace; no control bytes but HTAB.
_FIELD_VALUE = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_STATUS_LINES: dict[int, bytes] = {}
# Origins repeat their response headers (Server, Content-Type, Cache-Control...): a header
# checked once is not checked again. Bounded; a full table starts over.
# The checked lines of whole header lists that passed (a list that raised is never kept).
_CHECKED_BLOCKS: BoundedMemo[
    tuple[object, ...], tuple[tuple[bytes, ...], frozenset[bytes]]
] = BoundedMemo(1024, 8192)
_CHECKED_HEADERS_MAX = 4096
_CHECKED_VALUE_MAX = 256
_CHECKED_HEADERS: BoundedMemo[tuple[bytes, bytes], tuple[bytes, bytes | None]] = BoundedMemo(
    _CHECKED_HEADERS_MAX, _CHECKED_VALUE_MAX
)


def _checked_header(name: bytes, value: bytes) -> tuple[bytes, bytes | None]:
    """The normalised name, and the ``name: value`` line of a valid header or None for one
    that could split or smuggle (a non-token name, a control byte in the value); a header
    checked before comes from the table."""
    try:
        checked = _CHECKED_HEADERS.get((name, value))
    except TypeError:  # bytearray or memoryview: not hashable, never remembered
        return _check_header(bytes(name), bytes(value))
    return checked if checked is not None else _check_and_remember(name, value)


def _check_and_remember(name: bytes, value: bytes) -> tuple[bytes, bytes | None]:
    return _CHECKED_HEADERS.remember(
        (name, value), _check_header(name, value), len(name) + len(value)
    )


def _check_header(name: bytes, value: bytes) -> tuple[bytes, bytes | None]:
    normalised = normalise_header_name(name)
    value = value.strip(b" \t")
    if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
        return normalised, None
    return normalised, name + b": " + value


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %b" % (status, reason_phrase(status))
    return line


class UpgradedStream(trio.abc.Stream):
    """The connection after ``101``: already-buffered bytes first, then the socket.

    An upgraded connection (a WebSocket) may idle for days and the edge may hold thousands, so
    on a plain socket a read first parks in ``wait_readable``: a task waiting there holds about
    half the memory of one waiting inside ``SocketStream.receive_some``. Skipped when the last
    read filled ``max_bytes`` (more is likely waiting), and for TLS, which may hold decrypted
    bytes the socket does not show.
    """

    __slots__ = ("_buffered", "_more_waiting", "_socket", "_stream")

    def __init__(self, stream: trio.abc.Stream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._more_waiting = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._buffered:
            size = len(self._buffered) if max_bytes is None else max_bytes
            chunk, self._buffered = self._buffered[:size], self._buffered[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        sock = self._socket
        if sock is not None and not self._more_waiting and sock.fileno() != -1:
            try:
                await trio.lowlevel.wait_readable(sock)
            except OSError:
                pass  # an unusable descriptor: the read reports it, as SocketStream words it
        data = bytes(await self._stream.receive_some(max_bytes))
        self._more_waiting = max_bytes is not None and len(data) >= max_bytes
        return data

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
