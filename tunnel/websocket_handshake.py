"""The WebSocket upgrade that opens a tunnel connection, as client (connector) or server (edge).

Two things it guarantees that the session relies on: the upgrade is capped in bytes
(``max_handshake_bytes``), and on the server the credential check runs on the parsed request
*before* any WebSocket exists, so a bad credential costs one HTTP response and nothing else.
wsproto parses and writes the upgrade; only the upgrade head is fed to it, since bytes that
follow it in the same read already belong to the first frames, which ``WebSocketTransport``
receives. Time limits belong to the caller (``trio.move_on_after`` around the handshake).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .errors import HandshakeError, HandshakeRefused, HandshakeRejected
from .transport import DEFAULT_MAX_MESSAGE_SIZE, RECEIVE_SIZE, RandomBytes, WebSocketTransport

__all__ = [
    "Authorize",
    "HandshakeError",
    "HandshakeRefused",
    "HandshakeRejected",
    "HandshakeRequest",
    "Rejection",
    "accept_websocket",
    "connect_websocket",
]

DEFAULT_MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_REJECTION_BODY = 16 * 1024


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


def _encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _head_end(buffer: bytes | bytearray) -> int | None:
    """Index just past the blank line that ends an HTTP head, if it has arrived."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [index + size for index, size in ((crlf, 4), (lf, 2)) if index != -1]
    return min(ends) if ends else None


async def connect_websocket(
    stream: trio.abc.Stream,
    *,
    host: str,
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    random_bytes: RandomBytes = os.urandom,
) -> WebSocketTransport:
    """Upgrade ``stream`` as the client; raises HandshakeRefused on a non-101 answer."""
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(host=host, target=path, extra_headers=_encode_headers(headers))
    try:
        await stream.send_all(ws.send(request))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise HandshakeError(f"the connection broke during the upgrade: {error}", 502) from None
    head = bytearray()
    leftover = b""
    status: int | None = None
    body = bytearray()
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return WebSocketTransport(
                    stream,
                    client=True,
                    received=leftover,
                    max_message_size=max_message_size,
                    random_bytes=random_bytes,
                )
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise HandshakeRefused(status, b"")
            elif isinstance(event, RejectData) and status is not None:
                body += event.data[: MAX_REJECTION_BODY - len(body)]
                if event.body_finished or len(body) >= MAX_REJECTION_BODY:
                    raise HandshakeRefused(status, bytes(body))
        if status is not None and leftover:
            # A refusal's body: wsproto reads it through its own HTTP parser.
            data, leftover = leftover, b""
        else:
            try:
                data = bytes(await stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise HandshakeError(
                    f"the connection broke during the upgrade: {error}", 502
                ) from None
            if not data:
                if status is not None:
                    raise HandshakeRefused(status, bytes(body))
                raise HandshakeError("the server closed the connection during the upgrade", 502)
        if status is None:
            # Feed wsproto the response head only: what follows a 101 is WebSocket frames.
            head += data
            end = _head_end(head)
            if end is None:
                if len(head) > max_handshake_bytes:
                    raise HandshakeError(
                        f"upgrade response exceeds {max_handshake_bytes} bytes", 502
                    )
                continue
            data, leftover = bytes(head[:end]), bytes(head[end:])
        try:
            ws.receive_data(data)
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
    head = bytearray()
    while True:
        try:
            data = await stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise HandshakeError(f"the connection broke during the upgrade: {error}") from None
        if not data:
            raise HandshakeError("the client closed the connection before upgrading")
        head += data
        end = _head_end(head)
        if (end if end is not None else len(head)) > max_handshake_bytes:
            await _answer_raw(stream, 431)
            raise HandshakeError(f"upgrade request exceeds {max_handshake_bytes} bytes", 431)
        if end is not None:
            break
    leftover = bytes(head[end:])
    try:
        ws.receive_data(bytes(head[:end]))
    except (RemoteProtocolError, ValueError) as error:
        await _answer_raw(stream, 400)
        raise HandshakeError(f"not a valid WebSocket upgrade: {error}") from None
    request = next((event for event in ws.events() if isinstance(event, Request)), None)
    if request is None:
        await _answer_raw(stream, 400)
        raise HandshakeError("not a valid WebSocket upgrade: no request")

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
    except LocalProtocolError as error:
        raise HandshakeError(f"the upgrade could not be answered: {error}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        raise HandshakeError(f"the connection broke during the upgrade: {error}") from None
    transport = WebSocketTransport(
        stream, client=False, received=leftover, max_message_size=max_message_size
    )
    return transport, handshake
