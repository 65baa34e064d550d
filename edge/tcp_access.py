"""Raw TCP applications reached through the public listener, carried in a WebSocket.

A TCP client (``tunnelgate access tcp``, e.g. as an SSH ``ProxyCommand``) cannot speak HTTP to
the app, so it wraps the byte stream in a WebSocket to ``https://HOSTNAME/`` and marks the
upgrade with ``Tunnelgate-Stream: tcp``. The upgrade is an ordinary public request: the Access
gate runs on it (app cookie, ``cf-access-token`` header or service-token headers), so a TCP
application's policies apply exactly as an HTTP one's, and the grant's guard closes the relay
when the session or policy stops granting it.

The edge then opens a tunnel stream whose head is ``{"kind": "tcp", ...}`` (no HTTP request
reaches the connector) and, once the connector answers 200 (origin connected), answers the
upgrade with 101 and relays WebSocket *payload* bytes to the stream and stream bytes back as
binary messages. The edge terminates the WebSocket: the tunnel carries the raw TCP bytes.

WebSocket has no half-close: when the client's side ends, the stream gets an EOF (the origin
sees a half-close and may still answer); when the origin's side ends, the WebSocket closes.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import trio

from edge.http11 import IncomingRequest, ResponseWriter
from tunnel.errors import SessionClosed, StreamReset, TransportClosed
from tunnel.streams import TunnelStream
from tunnel.transport import WebSocketTransport

__all__ = [
    "TCP_STREAM_HEADER",
    "is_tcp_request",
    "is_tcp_stream",
    "relay_tcp_over_websocket",
    "tcp_head",
]

log = logging.getLogger(__name__)

TCP_STREAM_HEADER = b"Tunnelgate-Stream"
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RELAY_CHUNK = 65536


def is_tcp_request(request: IncomingRequest) -> bool:
    """A WebSocket upgrade that asks for a raw TCP stream to the host's origin."""
    if not request.is_websocket_upgrade:
        return False
    marker = request.header(TCP_STREAM_HEADER)
    if marker is None or marker.strip().lower() != b"tcp":
        return False
    return request.header(b"sec-websocket-key") is not None


def tcp_head(request: IncomingRequest, identity: dict[str, object] | None) -> dict[str, object]:
    """The stream head for a TCP application. The cleaned request headers travel with it so
    the connector can verify the assertion the gate added (``connector.access``)."""
    return {
        "kind": "tcp",
        "host": request.host,
        "client": request.client_ip,
        "identity": identity,
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
    }


def is_tcp_stream(stream: TunnelStream) -> bool:
    return stream.head.get("kind") == "tcp"


def websocket_accept(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a client's key (RFC 6455, section 4.2.2)."""
    digest = hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest()
    return base64.b64encode(digest)


async def relay_tcp_over_websocket(
    request: IncomingRequest, respond: ResponseWriter, stream: TunnelStream
) -> None:
    """Answer the upgrade (the connector already answered 200) and relay until both end."""
    key = request.header(b"sec-websocket-key") or b""
    client = await respond.upgrade(
        101,
        [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", websocket_accept(key)),
        ],
    )
    websocket = WebSocketTransport(client, client=False)
    log.info("tcp stream opened host=%s stream=%s", request.host, stream.stream_id)

    async def client_to_origin() -> None:
        try:
            while True:
                try:
                    data = await websocket.receive_data()
                except TransportClosed:
                    break
                if data:
                    await stream.send_all(bytes(data))
            await stream.send_eof()
        except (StreamReset, SessionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()

    async def origin_to_client() -> None:
        try:
            while chunk := await stream.receive_some(RELAY_CHUNK):
                await websocket.send_message(chunk)
        except (StreamReset, SessionClosed, TransportClosed, trio.BrokenResourceError,
                trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_to_origin)
            nursery.start_soon(origin_to_client)
    finally:
        with trio.CancelScope(shield=True):
            await websocket.aclose()
        log.info("tcp stream closed host=%s stream=%s", request.host, stream.stream_id)
