"""WebSocket transport for the tunnel: binary messages over any ``trio.abc.Stream``.

The tunnel protocol frames itself, so this layer only moves byte strings. Two
things it guarantees that the session relies on:

* the upgrade is capped in bytes (``max_handshake_bytes``) and, on the server, the
  credential check runs on the parsed request *before* any WebSocket exists, so a
  bad credential costs one HTTP response and nothing else;
* a message larger than ``max_message_size`` closes the connection (1009) instead
  of growing a buffer.

Time limits belong to the caller (``trio.move_on_after`` around the handshake).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .errors import (
    HandshakeError,
    HandshakeRefused,
    HandshakeRejected,
    MessageTooLarge,
    TransportClosed,
    TransportError,
)

__all__ = [
    "Authorize",
    "HandshakeError",
    "HandshakeRefused",
    "HandshakeRejected",
    "HandshakeRequest",
    "MessageTooLarge",
    "Rejection",
    "TransportClosed",
    "TransportError",
    "WebSocketTransport",
    "accept_websocket",
    "connect_websocket",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_REJECTION_BODY = 16 * 1024
RECEIVE_SIZE = 256 * 1024
CLOSE_SEND_TIMEOUT = 1.0

_CLOSE_NORMAL = 1000
_CLOSE_UNSUPPORTED_DATA = 1003
_CLOSE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """The parsed upgrade request shown to ``authorize``; header names are lower-case."""

    path: str
    host: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An HTTP answer that refuses the upgrade (e.g. 401 for a bad credential)."""

    status_code: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Authorize = Callable[[HandshakeRequest], Rejection | None]


class WebSocketTransport:
    """Binary WebSocket messages over a trio stream.

    One task may send while another receives. Pongs and close replies produced while
    receiving are written by the receiver only when no send is in progress, otherwise
    by the sender right after its message, so the reader never waits on the writer.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.max_message_size = max_message_size
        self._send_lock = trio.Lock()
        self._pending_control = bytearray()
        self._ready: deque[bytes] = deque()
        self._parts: list[bytes] = []
        self._partial_size = 0
        self._end: TransportError | None = None
        self._closed = False
        self._write_failed = False

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    async def send_message(self, data: bytes) -> None:
        if self._closed:
            raise TransportClosed("the transport is closed locally")
        async with self._send_lock:
            try:
                payload = self._ws.send(BytesMessage(data=data))
            except LocalProtocolError:
                raise TransportClosed("the WebSocket is closing") from None
            await self._write(payload)
            await self._flush_control_locked()

    async def _write(self, payload: bytes) -> None:
        if self._write_failed:
            raise TransportClosed("an earlier send was interrupted; the framing is lost")
        try:
            await self._stream.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._write_failed = True
            raise TransportClosed(f"the connection broke while sending: {error}") from None
        except BaseException:
            # Cancelled part-way: the peer may hold half a frame, so nothing more may follow.
            self._write_failed = True
            raise

    async def _flush_control_locked(self) -> None:
        while self._pending_control:
            control = bytes(self._pending_control)
            self._pending_control.clear()
            await self._write(control)

    async def _flush_control(self) -> None:
        if self._pending_control and not self._send_lock.locked():
            async with self._send_lock:
                await self._flush_control_locked()

    async def receive_message(self) -> bytes:
        """The next complete binary message; raises TransportClosed at the end."""
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._end is not None:
                raise self._end
            self._process_events()
            if self._pending_control:
                try:
                    await self._flush_control()
                except TransportClosed:
                    pass
            if self._ready or self._end is not None:
                continue
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._end = TransportClosed(f"the connection broke while receiving: {error}")
                continue
            self._ws.receive_data(bytes(data) if data else None)

    def _process_events(self) -> None:
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                self._partial_size += len(event.data)
                if self._partial_size > self.max_message_size:
                    self._fail_locally(
                        _CLOSE_TOO_BIG,
                        MessageTooLarge(f"a message exceeded {self.max_message_size} bytes"),
                    )
                    return
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    parts = self._parts
                    self._ready.append(parts[0] if len(parts) == 1 else b"".join(parts))
                    self._parts = []
                    self._partial_size = 0
            elif isinstance(event, Ping):
                self._pending_control += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._pending_control += self._ws.send(event.response())
                self._end = TransportClosed(
                    f"the peer closed the WebSocket ({event.code} {event.reason or ''})".strip(),
                    code=event.code,
                )
                return
            elif isinstance(event, TextMessage):
                self._fail_locally(
                    _CLOSE_UNSUPPORTED_DATA, TransportError("text message on a binary tunnel")
                )
                return

    def _fail_locally(self, code: int, error: TransportError) -> None:
        logger.debug("closing the WebSocket with %d: %s", code, error)
        if self._ws.state is ConnectionState.OPEN:
            self._pending_control += self._ws.send(CloseConnection(code=code))
        self._end = error

    async def aclose(self) -> None:
        """Send a close frame when that cannot block for long, then close the stream."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            graceful = not self._send_lock.locked() and not self._write_failed
            if self._ws.state is ConnectionState.OPEN and graceful:
                self._pending_control += self._ws.send(CloseConnection(code=_CLOSE_NORMAL))
            if self._pending_control and graceful:
                with trio.move_on_after(CLOSE_SEND_TIMEOUT):
                    await self._flush_control()
        except (TransportClosed, LocalProtocolError):
            pass
        finally:
            await self._stream.aclose()


def _encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def connect_websocket(
    stream: trio.abc.Stream,
    *,
    host: str,
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> WebSocketTransport:
    """Upgrade ``stream`` as the client; raises HandshakeRefused on a non-101 answer."""
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(host=host, target=path, extra_headers=_encode_headers(headers))
    try:
        await stream.send_all(ws.send(request))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise HandshakeError(f"the connection broke during the upgrade: {error}", 502) from None
    received = 0
    status: int | None = None
    body = bytearray()
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return WebSocketTransport(stream, ws, max_message_size=max_message_size)
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise HandshakeRefused(status, b"")
            elif isinstance(event, RejectData) and status is not None:
                body += event.data[: MAX_REJECTION_BODY - len(body)]
                if event.body_finished or len(body) >= MAX_REJECTION_BODY:
                    raise HandshakeRefused(status, bytes(body))
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise HandshakeError(f"the connection broke during the upgrade: {error}", 502) from None
        if not data:
            if status is not None:
                raise HandshakeRefused(status, bytes(body))
            raise HandshakeError("the server closed the connection during the upgrade", 502)
        received += len(data)
        if status is None and received > max_handshake_bytes:
            raise HandshakeError(f"upgrade response exceeds {max_handshake_bytes} bytes", 502)
        try:
            ws.receive_data(bytes(data))
        except (RemoteProtocolError, ValueError) as error:
            raise HandshakeError(f"malformed upgrade response: {error}", 502) from None


_STATUS_LINES = {400: b"400 Bad Request", 431: b"431 Request Header Fields Too Large"}


async def _answer_raw(stream: trio.abc.Stream, status: int) -> None:
    """Answer a request too broken for the WebSocket handshake to reply to itself."""
    response = (
        b"HTTP/1.1 " + _STATUS_LINES[status] + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def accept_websocket(
    stream: trio.abc.Stream,
    authorize: Authorize,
    *,
    max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[WebSocketTransport, HandshakeRequest]:
    """Serve the upgrade: parse, ``authorize``, then answer 101 or the rejection.

    On refusal the HTTP answer is sent and HandshakeError (HandshakeRejected when
    ``authorize`` said no) is raised; the caller still owns and closes ``stream``.
    """
    ws = WSConnection(ConnectionType.SERVER)
    received = 0
    request: Request | None = None
    while request is None:
        for event in ws.events():
            if isinstance(event, Request):
                request = event
                break
        if request is not None:
            break
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise HandshakeError(f"the connection broke during the upgrade: {error}") from None
        if not data:
            raise HandshakeError("the client closed the connection before upgrading")
        received += len(data)
        if received > max_handshake_bytes:
            await _answer_raw(stream, 431)
            raise HandshakeError(f"upgrade request exceeds {max_handshake_bytes} bytes", 431)
        try:
            ws.receive_data(bytes(data))
        except (RemoteProtocolError, ValueError) as error:
            await _answer_raw(stream, 400)
            raise HandshakeError(f"not a valid WebSocket upgrade: {error}") from None

    handshake = HandshakeRequest(
        path=request.target,
        host=request.host,
        headers=tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in request.extra_headers
        ),
    )
    rejection = authorize(handshake)
    try:
        if rejection is not None:
            body = rejection.body
            response = ws.send(
                RejectConnection(
                    status_code=rejection.status_code,
                    headers=[
                        (b"content-type", rejection.content_type.encode("latin-1")),
                        (b"content-length", str(len(body)).encode("ascii")),
                        (b"connection", b"close"),
                    ],
                    has_body=True,
                )
            )
            response += ws.send(RejectData(data=body, body_finished=True))
            await stream.send_all(response)
            raise HandshakeRejected(
                f"upgrade refused with {rejection.status_code}", rejection.status_code
            )
        await stream.send_all(ws.send(AcceptConnection()))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise HandshakeError(f"the connection broke during the upgrade: {error}") from None
    return WebSocketTransport(stream, ws, max_message_size=max_message_size), handshake
