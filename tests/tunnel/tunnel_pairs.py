"""Connected pairs for the tunnel tests: protocol pairs, WebSocket pairs, session pairs.

Everything runs in memory: the WebSocket handshake is real (wsproto on both sides)
but the bytes travel over ``trio.testing.memory_stream_pair``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
import trio.testing

from tunnel.protocol import (
    Event,
    HelloReceived,
    Limits,
    Registered,
    RegisterInfo,
    RegisterReceived,
    Role,
    TunnelConnection,
)
from tunnel.session import TunnelSession
from tunnel.streams import TunnelStream
from tunnel.transport import WebSocketTransport
from tunnel.websocket_handshake import (
    HandshakeRequest,
    Rejection,
    accept_websocket,
    connect_websocket,
)

REGISTER_INFO = RegisterInfo(
    tunnel_id="6f1c9a52-8d0e-4a57-9c3b-2f4d5e6a7b8c",
    connector_id="connector-a",
    conn_index=0,
    version="0.1.0",
    features=("streams",),
)


def deliver(sender: TunnelConnection, receiver: TunnelConnection) -> list[Event]:
    """Move everything ``sender`` queued into ``receiver``."""
    return receiver.receive_data(sender.data_to_send())


def registered_pair(
    edge_limits: Limits | None = None, connector_limits: Limits | None = None
) -> tuple[TunnelConnection, TunnelConnection]:
    """Sans-IO (edge, connector) connections after HELLO, REGISTER and REGISTERED."""
    edge_limits = edge_limits or Limits()
    connector_limits = connector_limits or Limits()
    edge = TunnelConnection(Role.EDGE, limits=edge_limits)
    connector = TunnelConnection(Role.CONNECTOR, limits=connector_limits)
    connector.register(REGISTER_INFO)
    assert deliver(connector, edge) == [
        HelloReceived(1, connector_limits),
        RegisterReceived(REGISTER_INFO),
    ]
    edge.registered("conn-1", "edge-1")
    assert deliver(edge, connector) == [
        HelloReceived(1, edge_limits),
        Registered("conn-1", "edge-1"),
    ]
    assert edge.is_registered
    assert connector.is_registered
    return edge, connector


def allow_all(request: HandshakeRequest) -> Rejection | None:
    return None


async def websocket_pair(
    *,
    client_stream: trio.abc.Stream | None = None,
    server_stream: trio.abc.Stream | None = None,
) -> tuple[WebSocketTransport, WebSocketTransport]:
    """(client, server) transports after a real upgrade over a memory stream pair."""
    if client_stream is None or server_stream is None:
        client_stream, server_stream = trio.testing.memory_stream_pair()
    result: dict[str, WebSocketTransport] = {}

    async def client() -> None:
        assert client_stream is not None
        result["client"] = await connect_websocket(client_stream, host="edge.test")

    async def server() -> None:
        assert server_stream is not None
        result["server"], _ = await accept_websocket(server_stream, allow_all)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    return result["client"], result["server"]


@dataclass
class SessionPair:
    edge: TunnelSession
    connector: TunnelSession
    incoming: trio.MemoryReceiveChannel[TunnelStream]

    async def open_pair(
        self, head: dict[str, object] | None = None
    ) -> tuple[TunnelStream, TunnelStream]:
        """An (edge, connector) stream pair whose response head has been exchanged."""
        edge_stream = await self.edge.open_stream(head or {"kind": "tcp", "host": "db.internal"})
        connector_stream = await self.incoming.receive()
        await connector_stream.send_head({"status": 200})
        assert await edge_stream.receive_head() == {"status": 200}
        return edge_stream, connector_stream


class ManualPeer:
    """A peer driven step by step by the test: a raw connection over a real transport."""

    def __init__(self, transport: WebSocketTransport, connection: TunnelConnection) -> None:
        self.transport = transport
        self.connection = connection

    async def flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            await self.transport.send_message(data)

    async def receive_events(self) -> list[object]:
        return list(self.connection.receive_data(await self.transport.receive_message()))

    async def receive_until(self, kind: type) -> list[object]:
        """Events up to and including the first one of ``kind``."""
        events: list[object] = []
        while not any(isinstance(event, kind) for event in events):
            events.extend(await self.receive_events())
        return events


PairFactory = Callable[..., Awaitable[SessionPair]]
