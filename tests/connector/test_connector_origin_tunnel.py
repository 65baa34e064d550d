"""The dispatcher behind a real tunnel session pair (WebSocket over memory streams)."""

from __future__ import annotations

import hashlib
import json

import pytest
import trio
import trio.testing
from connector_test_origins import H11Origin, closed_port, serve_tcp

from connector.ingress import IngressTable
from connector.origin import OriginDispatcher
from tunnel.errors import StreamReset
from tunnel.protocol import ErrorCode, RegisterInfo, Role, TunnelConnection
from tunnel.session import TunnelSession
from tunnel.streams import TunnelStream
from tunnel.transport import WebSocketTransport
from tunnel.websocket_handshake import accept_websocket, connect_websocket

REGISTER_INFO = RegisterInfo(tunnel_id="6f1c9a52-8d0e-4a57-9c3b-2f4d5e6a7b8c",
                             connector_id="connector-a", conn_index=0, version="0.1.0",
                             features=())


async def edge_session_serving(nursery: trio.Nursery,
                               dispatcher: OriginDispatcher) -> TunnelSession:
    """A registered edge session whose connector side hands streams to ``dispatcher``."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    transports: dict[str, WebSocketTransport] = {}

    async def client() -> None:
        transports["client"] = await connect_websocket(client_stream, host="edge.test")

    async def server() -> None:
        transports["server"], _ = await accept_websocket(server_stream, lambda request: None)

    async with trio.open_nursery() as handshake:
        handshake.start_soon(client)
        handshake.start_soon(server)
    edge = TunnelSession(transports["server"], TunnelConnection(Role.EDGE))
    connector = TunnelSession(transports["client"], TunnelConnection(Role.CONNECTOR),
                              handle_stream=dispatcher.serve_stream)
    nursery.start_soon(edge.run)
    nursery.start_soon(connector.run)

    async def accept() -> None:
        await edge.accept_registration()
        edge.registered("conn-1", "edge-1")

    async with trio.open_nursery() as registration:
        registration.start_soon(accept)
        await connector.register(REGISTER_INFO)
    return edge


def head(target: str, method: str = "GET",
         headers: list[list[str]] | None = None) -> dict[str, object]:
    return {"kind": "http", "method": method, "target": target, "host": "app.example.com",
            "scheme": "https", "headers": headers or [], "client": "203.0.113.9",
            "identity": None}


async def read_all(stream: TunnelStream) -> bytes:
    body = bytearray()
    while chunk := await stream.receive_some(65536):
        body.extend(chunk)
    return bytes(body)


async def test_requests_through_a_real_tunnel_session(nursery: trio.Nursery) -> None:
    server = H11Origin()
    port = await serve_tcp(nursery, server.serve_connection)
    async with OriginDispatcher(IngressTable.single(f"http://127.0.0.1:{port}")) as dispatcher:
        edge = await edge_session_serving(nursery, dispatcher)

        for _ in range(3):
            stream = await edge.open_stream(head("/hello"), end_stream=True)
            response = await stream.receive_head()
            assert response["status"] == 200
            assert json.loads(await read_all(stream))["xff"] == "203.0.113.9"
            await stream.aclose()

        body = bytes(range(256)) * 8192  # 2 MiB, several flow-control windows
        stream = await edge.open_stream(head("/sha256", "POST",
                                             [["content-length", str(len(body))]]))

        async def upload() -> None:
            for offset in range(0, len(body), 50_000):
                await stream.send_all(body[offset:offset + 50_000])
            await stream.send_eof()

        async with trio.open_nursery() as exchange:
            exchange.start_soon(upload)
            response = await stream.receive_head()
            answer = json.loads(await read_all(stream))
        assert response["status"] == 200
        assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
        await stream.aclose()
    assert server.accepted == 1


async def test_origin_failure_reaches_the_edge_as_a_reset(nursery: trio.Nursery) -> None:
    table = IngressTable.single(f"http://127.0.0.1:{closed_port()}")
    async with OriginDispatcher(table) as dispatcher:
        edge = await edge_session_serving(nursery, dispatcher)
        stream = await edge.open_stream(head("/"), end_stream=True)
        with pytest.raises(StreamReset) as caught:
            await stream.receive_head()
        assert caught.value.code == ErrorCode.ORIGIN_UNREACHABLE
        await stream.aclose()
