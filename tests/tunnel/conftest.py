"""Fixtures for the tunnel driver tests."""

from __future__ import annotations

import pytest
import trio
from tunnel_pairs import REGISTER_INFO, PairFactory, SessionPair, websocket_pair

from tunnel.protocol import Limits, Role, TunnelConnection
from tunnel.session import DEFAULT_TIMING, SessionTiming, StreamHandler, TunnelSession
from tunnel.streams import TunnelStream


@pytest.fixture
def session_pair(nursery: trio.Nursery) -> PairFactory:
    """Factory for a registered edge/connector session pair running in the test's nursery.

    Unless ``handle_stream`` is given, incoming streams are parked (kept open) and
    delivered on ``pair.incoming``.
    """

    async def make(
        *,
        handle_stream: StreamHandler | None = None,
        edge_limits: Limits = Limits(),  # noqa: B008
        connector_limits: Limits = Limits(),  # noqa: B008
        timing: SessionTiming = DEFAULT_TIMING,
        max_outgoing: int = 1024 * 1024,
    ) -> SessionPair:
        send_channel, receive_channel = trio.open_memory_channel[TunnelStream](100)

        async def park_stream(stream: TunnelStream) -> None:
            await send_channel.send(stream)
            await trio.sleep_forever()

        client, server = await websocket_pair()
        edge = TunnelSession(
            server,
            TunnelConnection(Role.EDGE, limits=edge_limits),
            timing=timing,
            max_outgoing=max_outgoing,
        )
        connector = TunnelSession(
            client,
            TunnelConnection(Role.CONNECTOR, limits=connector_limits),
            handle_stream=handle_stream or park_stream,
            timing=timing,
            max_outgoing=max_outgoing,
        )
        nursery.start_soon(edge.run)
        nursery.start_soon(connector.run)

        async def accept() -> None:
            info = await edge.accept_registration()
            assert info == REGISTER_INFO
            edge.registered("conn-1", "edge-1")

        async with trio.open_nursery() as inner:
            inner.start_soon(accept)
            registered = await connector.register(REGISTER_INFO)
        assert (registered.connection_id, registered.edge_id) == ("conn-1", "edge-1")
        return SessionPair(edge, connector, receive_channel)

    return make
