"""Keep-alive HTTP/1.1 connections to origins, and the client side of HTTP/1.1 they speak.

The connector sends every proxied request through here, so the codec is written for that one
job instead of going through a general-purpose HTTP library: requests are serialised in one
pass (every name and value checked, so nothing from the tunnel can split a request), and
responses are parsed straight from the socket buffer. What it accepts from an origin is
deliberately narrow where framing is at stake:

* a head must end within ``MAX_RESPONSE_HEAD`` bytes; obs-fold lines are refused;
* ``Transfer-Encoding`` must be exactly ``chunked``, and may not come with ``Content-Length``
  (the classic smuggling pair); several ``Content-Length`` headers must agree;
* a body without either header runs to the end of the connection, which is then not reused;
* ``1xx`` answers other than ``101`` are skipped; ``HEAD``, ``204`` and ``304`` have no body.

A connection is reused only after a complete exchange that neither side marked
``Connection: close`` (HTTP/1.0 answers count as marked). Any I/O error or broken framing is
:class:`OriginUnreachable` and makes the connection unusable.
"""

from __future__ import annotations

import logging
import math
import re
import select
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from connector.errors import OriginTimeout, OriginUnreachable
from connector.ingress import HttpService, OriginRequest, TcpService
from tunnel.bounded_memo import BoundedMemo
from tunnel.fd_io import receive_from_fd, write_without_waiting

log = logging.getLogger(__name__)

__all__ = [
    "MAX_RESPONSE_HEAD",
    "InvalidRequest",
    "OriginConnection",
    "OriginPool",
    "ResponseHead",
    "deadline_after",
    "encode_request_head",
    "idle_connection_alive",
]

CHUNK = 65536
BODY_CHUNK = 256 * 1024
"""Reads of a response body with a known length: large, and handed on without the buffer."""
MAX_RESPONSE_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
_ORIGIN_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
# A field value without leading or trailing whitespace; no control bytes but HTAB.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
# A token, a colon, and a value without control bytes but HTAB (leading blanks skipped here,
# trailing ones stripped by the caller: a lazy value followed by "[ \t]*" retried the tail at
# every byte of the value).
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")

# Body framings of a response.
_NO_BODY = 0
_LENGTH = 1
_CHUNKED = 2
_UNTIL_CLOSE = 3


class InvalidRequest(ValueError):
    """A request head that cannot be written as valid HTTP/1.1 (names the bad part)."""


def encode_request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers, checked byte for byte; raises InvalidRequest."""
    if _TOKEN.fullmatch(method) is None:
        raise InvalidRequest(f"bad method {method!r}")
    if _TARGET.fullmatch(target) is None:
        raise InvalidRequest(f"bad request target {target!r}")
    lines = [method + b" " + target + b" HTTP/1.1"]
    checked = _CHECKED_REQUEST_LINES
    for name, value in headers:
        line = checked.get((name, value))
        if line is None:
            line = _request_header_line(name, value)
        lines.append(line)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


# Requests repeat their headers (Host, the forwarding headers, the app token...): a header of
# up to 2 KiB checked once is not checked again. Bounded; a full table starts over.
_CHECKED_LINES_MAX = 1024
_CHECKED_LINE_MAX = 2048
_CHECKED_REQUEST_LINES: BoundedMemo[tuple[bytes, bytes], bytes] = BoundedMemo(
    _CHECKED_LINES_MAX, _CHECKED_LINE_MAX
)


def _request_header_line(name: bytes, value: bytes) -> bytes:
    stripped = value.strip(b" \t")
    if _TOKEN.fullmatch(name) is None:
        raise InvalidRequest(f"bad header name {name!r}")
    if _FIELD_VALUE.fullmatch(stripped) is None:
        raise InvalidRequest(f"bad value for header {name!r}")
    return _CHECKED_REQUEST_LINES.remember((name, value), name + b": " + stripped,
                                           len(name) + len(value))


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head; ``headers`` keep the origin's spelling and order.

    Heads that repeat byte for byte share one parsed object (``_HeadFacts``): read it, never
    change it. ``forwarded`` is a place for what the dispatcher derives from it once."""

    status: int
    headers: list[tuple[bytes, bytes]]
    http_minor: int
    forwarded: list[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class _HeadFacts:
    """A parsed head and what its framing depends on, remembered for heads that repeat."""

    head: ResponseHead
    lengths: frozenset[bytes]
    codings: tuple[bytes, ...]
    closes: bool


# An origin answers the same resource with the same head bytes (within the second of its Date
# line): a head parsed and scanned once is looked up afterwards. Bounded; a full table starts
# over. Heads that fail to parse are never remembered.
_HEADS_MAX = 256
_HEAD_MAX = 4096
_SEEN_HEADS: BoundedMemo[bytes, _HeadFacts] = BoundedMemo(_HEADS_MAX, _HEAD_MAX)


# Origins repeat their response header lines (Server, Content-Type...): a short line parsed
# once is looked up afterwards. Bounded like the request lines.
_PARSED_RESPONSE_LINES: BoundedMemo[bytes, tuple[bytes, bytes]] = BoundedMemo(
    _CHECKED_LINES_MAX, _CHECKED_LINE_MAX
)


def _comma_tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


class OriginConnection:
    """One HTTP/1.1 connection to an origin: write a request, read its answer.

    ``reusable`` turns false on any error, on ``Connection: close`` and on a body that ran
    to the end of the connection; ``exchange_complete`` says whether both messages ended.
    """

    __slots__ = (
        "_body_left",
        "_chunk_state",
        "_fd",
        "_framing",
        "buffer",
        "eof",
        "head_timed_out",
        "idle_since",
        "received_any",
        "request_done",
        "response_done",
        "reusable",
        "reused",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self.buffer = bytearray()
        self.eof = False
        self.head_timed_out = False
        self.idle_since = 0.0
        self.reused = False
        self.received_any = False
        self.reusable = True
        self.request_done = False
        self.response_done = False
        self._framing = _NO_BODY
        self._body_left = 0
        self._chunk_state = 0  # 0: size line next, 1: in data, 2: CRLF after data, 3: trailers

    async def close(self) -> None:
        self._fd = None  # the descriptor may be reused once the socket is closed
        await trio.aclose_forcefully(self.stream)

    def start_exchange(self) -> None:
        self.request_done = False
        self.response_done = False

    @property
    def exchange_complete(self) -> bool:
        return self.request_done and self.response_done

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        sent = 0
        if self._fd is not None:
            # First without trio's machinery: a request usually fits the socket buffer at once.
            try:
                sent = write_without_waiting(self._fd, data)
            except OSError as exc:
                self.reusable = False
                raise OriginUnreachable(f"origin connection broke while sending: {exc}") from exc
            if sent == len(data):
                return
        try:
            await self.stream.send_all(memoryview(data)[sent:] if sent else data)
        except _ORIGIN_IO_ERRORS as exc:
            self.reusable = False
            raise OriginUnreachable(f"origin connection broke while sending: {exc}") from exc

    def deadline_passed(self) -> None:
        """The response head is late (``tunnel.deadlines``): wake a read waiting for it,
        refuse further reads, never reuse the connection. The waiting exchange closes it."""
        self.head_timed_out = True
        self.reusable = False
        sock = _socket_of(self.stream)
        if sock is not None:
            trio.lowlevel.notify_closing(sock)

    async def _fill(self) -> None:
        """Read more bytes into the buffer; at the end of the connection set ``eof``."""
        if self.eof:
            raise self._broken("origin closed the connection mid-exchange")
        if self.head_timed_out:
            raise self._broken("origin sent no response head in time")
        try:
            data = await self._receive(CHUNK)
        except _ORIGIN_IO_ERRORS as exc:
            self.reusable = False
            raise OriginUnreachable(f"origin connection broke: {exc}") from exc
        if data:
            self.received_any = True
            self.buffer += data
        else:
            self.eof = True

    async def _receive(self, max_bytes: int) -> bytes | bytearray:
        if self._fd is not None:
            return await receive_from_fd(self._fd, max_bytes)
        return await self.stream.receive_some(max_bytes)

    def _broken(self, reason: str) -> OriginUnreachable:
        self.reusable = False
        return OriginUnreachable(reason)

    # -- the head ----------------------------------------------------------------------------

    async def read_head(self, *, head_request: bool = False) -> ResponseHead:
        """The next response head (an interim ``1xx`` is returned too; the caller skips it)."""
        buffer = self.buffer
        searched = 0
        while True:
            end = buffer.find(b"\r\n\r\n", searched)
            if end != -1:
                head_bytes, size = bytes(buffer[:end]), end + 4
                break
            bare = buffer.find(b"\n\n", searched)
            if bare != -1:
                head_bytes, size = bytes(buffer[:bare]), bare + 2
                break
            if len(buffer) > MAX_RESPONSE_HEAD:
                raise self._broken(f"origin response head exceeds {MAX_RESPONSE_HEAD} bytes")
            searched = max(0, len(buffer) - 3)
            await self._fill()
            if self.eof:
                raise self._broken("origin closed the connection mid-exchange")
        if size > MAX_RESPONSE_HEAD:
            raise self._broken(f"origin response head exceeds {MAX_RESPONSE_HEAD} bytes")
        del buffer[:size]
        facts = _SEEN_HEADS.get(head_bytes)
        if facts is None:
            facts = self._head_facts(head_bytes)
        self._frame_body(facts, head_request)
        return facts.head

    def _head_facts(self, head_bytes: bytes) -> _HeadFacts:
        head = self._parse_head(head_bytes)
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        closes = head.http_minor == 0
        for name, value in head.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                lengths.add(value.strip())
            elif lowered == b"transfer-encoding":
                codings += _comma_tokens(value)
            elif lowered == b"connection":
                closes = closes or b"close" in _comma_tokens(value)
        facts = _HeadFacts(head, frozenset(lengths), tuple(codings), closes)
        return _SEEN_HEADS.remember(head_bytes, facts, len(head_bytes))

    def _parse_head(self, head_bytes: bytes) -> ResponseHead:
        lines = head_bytes.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise self._broken(f"origin sent a bad status line {status_line[:80]!r}")
        headers: list[tuple[bytes, bytes]] = []
        seen = _PARSED_RESPONSE_LINES
        for raw in lines[1:]:
            header = seen.get(raw)
            if header is None:
                header = self._parse_header_line(raw)
            headers.append(header)
        return ResponseHead(int(match.group(2)), headers, int(match.group(1)))

    def _parse_header_line(self, raw: bytes) -> tuple[bytes, bytes]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        parsed = _HEADER_LINE.fullmatch(line)
        if parsed is None:
            raise self._broken(f"origin sent a bad header line {line[:80]!r}")
        name, value = parsed.groups()
        return _PARSED_RESPONSE_LINES.remember(raw, (name, value.rstrip(b" \t")), len(raw))

    def _frame_body(self, facts: _HeadFacts, head_request: bool) -> None:
        status = facts.head.status
        if status < 200:
            self._framing = _NO_BODY
            return
        lengths, codings = facts.lengths, facts.codings
        if facts.closes:
            self.reusable = False
        if codings and lengths:
            raise self._broken("origin sent both Transfer-Encoding and Content-Length")
        if head_request or status in (204, 304):
            self._framing = _NO_BODY
        elif codings:
            if codings != (b"chunked",):
                raise self._broken(f"origin used an unsupported transfer coding {list(codings)!r}")
            self._framing = _CHUNKED
            self._chunk_state = 0
        elif lengths:
            length = next(iter(lengths))
            if len(lengths) != 1 or not length.isdigit() or len(length) > 18:
                raise self._broken("origin sent an invalid or conflicting Content-Length")
            self._body_left = int(length)
            self._framing = _LENGTH if self._body_left else _NO_BODY
        else:
            self._framing = _UNTIL_CLOSE
            self.reusable = False
        if self._framing == _NO_BODY:
            self.response_done = True

    # -- the body ----------------------------------------------------------------------------

    def take_whole_body(self) -> bytes | None:
        """The entire rest of a length-framed body when it is already buffered, else None."""
        if self._framing != _LENGTH or self.response_done or len(self.buffer) < self._body_left:
            return None
        size = self._body_left
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self._body_left = 0
        self.response_done = True
        return data

    def read_body_nowait(self) -> bytes | None:
        """Body bytes already buffered: ``b""`` at the end, ``None`` when more must be read."""
        if self.response_done:
            return b""
        framing = self._framing
        buffer = self.buffer
        if framing == _LENGTH:
            if not buffer:
                return None
            size = min(self._body_left, len(buffer))
            data = bytes(buffer[:size])
            del buffer[:size]
            self._body_left -= size
            if not self._body_left:
                self.response_done = True
            return data
        if framing == _CHUNKED:
            return self._read_chunked()
        # Until the connection closes.
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            return data
        if self.eof:
            self.response_done = True
            return b""
        return None

    async def read_body(self) -> bytes | bytearray:
        """The next piece of the response body; ``b""`` once it is complete."""
        if self._framing == _LENGTH and self._body_left and not self.buffer and not self.eof:
            return await self._read_body_direct()
        while True:
            data = self.read_body_nowait()
            if data is not None:
                if not data and not self.response_done:
                    continue  # chunk framing consumed, no payload yet
                return data
            if self.eof and self._framing != _UNTIL_CLOSE:
                raise self._broken("origin closed the connection mid-exchange")
            await self._fill()

    async def _read_body_direct(self) -> bytes | bytearray:
        """The next read of a length-framed body, which is all body: no copy into the buffer."""
        try:
            data = await self._receive(min(self._body_left, BODY_CHUNK))
        except _ORIGIN_IO_ERRORS as exc:
            self.reusable = False
            raise OriginUnreachable(f"origin connection broke: {exc}") from exc
        if not data:
            self.eof = True
            raise self._broken("origin closed the connection mid-exchange")
        self.received_any = True
        self._body_left -= len(data)
        if not self._body_left:
            self.response_done = True
        return data

    def _read_chunked(self) -> bytes | None:
        buffer = self.buffer
        while True:
            state = self._chunk_state
            if state == 1:  # chunk data
                if not buffer:
                    return None
                size = min(self._body_left, len(buffer))
                data = bytes(buffer[:size])
                del buffer[:size]
                self._body_left -= size
                if not self._body_left:
                    self._chunk_state = 2
                return data
            line_end = buffer.find(b"\n")
            if line_end == -1:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise self._broken("origin sent an overlong chunk line")
                return None
            if line_end > MAX_CHUNK_LINE:
                raise self._broken("origin sent an overlong chunk line")
            line = bytes(buffer[:line_end]).rstrip(b"\r")
            del buffer[: line_end + 1]
            if state == 2:  # the CRLF that closes a chunk's data
                if line:
                    raise self._broken("origin sent chunk data longer than its size")
                self._chunk_state = 0
            elif state == 0:  # chunk size line
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise self._broken("origin sent a bad chunk size line")
                self._body_left = int(match.group(1), 16)
                self._chunk_state = 1 if self._body_left else 3
            elif not line:  # end of the trailers
                self.response_done = True
                return b""

    @property
    def pending(self) -> bytes:
        """Bytes read past the response head (after a 101 they belong to the new protocol)."""
        return bytes(self.buffer)


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def idle_connection_alive(stream: trio.abc.Stream) -> bool:
    """An idle keep-alive socket must have nothing to read: readable means closed (or junk)."""
    sock = _socket_of(stream)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(0)


def deadline_after(seconds: float) -> float:
    return trio.current_time() + seconds if seconds > 0 else math.inf


class OriginPool:
    """Idle keep-alive connections per origin, most recently used first.

    ``idle_check(stream)`` says whether an idle connection may be used again.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        idle_check: Callable[[trio.abc.Stream], bool] = idle_connection_alive,
    ) -> None:
        self._clock = clock
        self._idle_check = idle_check
        self._idle: dict[tuple[HttpService, OriginRequest], deque[OriginConnection]] = {}
        self._tls_contexts: dict[tuple[bool, Path | None], ssl.SSLContext] = {}
        self._closed = False

    async def acquire(self, service: HttpService, options: OriginRequest) -> OriginConnection:
        idle = self._idle.get((service, options))
        if idle:
            now = self._clock()
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < options.keep_alive_timeout and self._idle_check(
                    conn.stream
                ):
                    conn.reused = True
                    conn.received_any = False
                    conn.start_exchange()
                    return conn
                await conn.close()
        return OriginConnection(await self.connect(service, options))

    async def release(
        self, conn: OriginConnection, service: HttpService, options: OriginRequest
    ) -> None:
        if (
            self._closed
            or not conn.reusable
            or not conn.exchange_complete
            or conn.buffer
            or options.keep_alive_connections == 0
        ):
            await conn.close()
            return
        conn.idle_since = now = self._clock()
        idle = self._idle.setdefault((service, options), deque())
        idle.append(conn)
        while idle and (
            len(idle) > options.keep_alive_connections
            or now - idle[0].idle_since >= options.keep_alive_timeout
        ):
            await idle.popleft().close()

    async def discard(self, conn: OriginConnection) -> None:
        await conn.close()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        # Shielded: when closing under cancellation (shutdown), the first aclose would raise
        # Cancelled and leak every other idle socket. aclose_forcefully never blocks.
        with trio.CancelScope(shield=True):
            for conns in idle.values():
                for conn in conns:
                    await conn.close()

    def tls_context(self, options: OriginRequest) -> ssl.SSLContext:
        key = (options.no_tls_verify, options.ca_pool)
        context = self._tls_contexts.get(key)
        if context is None:
            context = ssl.create_default_context(
                cafile=str(options.ca_pool) if options.ca_pool else None
            )
            if options.no_tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_contexts[key] = context
        return context

    async def connect(
        self, service: HttpService | TcpService, options: OriginRequest
    ) -> trio.abc.Stream:
        """Open (and for TLS services, handshake) within ``connectTimeout``."""
        try:
            with trio.fail_at(deadline_after(options.connect_timeout)):
                if isinstance(service, HttpService) and service.unix_path is not None:
                    raw: trio.abc.Stream = await trio.open_unix_socket(service.unix_path)
                else:
                    # trio turns TCP_NODELAY on for the streams it opens.
                    raw = await trio.open_tcp_stream(service.host, service.port)
                if not (isinstance(service, HttpService) and service.tls):
                    return raw
                try:
                    tls = trio.SSLStream(
                        raw,
                        self.tls_context(options),
                        server_hostname=options.origin_server_name or service.host,
                        https_compatible=True,
                    )
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(raw)
                    raise
                return tls
        except trio.TooSlowError:
            raise OriginTimeout(
                f"connecting to {service} took longer than {options.connect_timeout:g}s"
            ) from None
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            cause = exc.__cause__ or exc
            log.warning("TLS with origin %s failed: %s", service, cause)
            raise OriginUnreachable(f"TLS with {service} failed: {cause}") from exc
        except OSError as exc:
            raise OriginUnreachable(f"cannot connect to {service}: {exc}") from exc

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._idle.values())
