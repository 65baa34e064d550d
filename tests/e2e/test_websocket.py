"""A WebSocket upgrade travels end to end: visitor -> edge -> tunnel -> connector -> origin."""

from __future__ import annotations

import pytest
import trio

from .conftest import ConnectorFactory, RunningEdge
from .origin import Origin
from .visitor import WebSocketClient, open_connection

pytestmark = pytest.mark.e2e

HANG_GUARD = 20.0


async def test_websocket_echo_through_the_tunnel(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("chat", "chat.example.test")
    await connector_factory(edge, credentials, origin[1])
    big = bytes(range(256)) * 1024  # several tunnel frames and WebSocket fragments
    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as stream:
            client = WebSocketClient(stream)
            assert await client.handshake("chat.example.test", "/ws") == 101
            await client.send("hello through the tunnel")
            assert await client.receive() == "hello through the tunnel"
            await client.send(big)
            assert await client.receive() == big
            for index in range(20):
                await client.send(f"message {index}")
            assert [await client.receive() for _ in range(20)] == \
                [f"message {index}" for index in range(20)]
            assert await client.close() == 1000


async def test_websocket_upgrade_for_an_offline_tunnel_is_refused(edge: RunningEdge) -> None:
    edge.create_tunnel("chat", "chat.example.test")
    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as stream:
            client = WebSocketClient(stream)
            assert await client.handshake("chat.example.test", "/ws") == 502
