"""TunnelStream is a well-behaved trio HalfCloseableStream."""

from __future__ import annotations

import trio
import trio.testing
from tunnel_pairs import PairFactory

from tunnel.protocol import Limits
from tunnel.streams import TunnelStream

WINDOW = 64 * 1024


async def test_tunnel_stream_passes_the_trio_half_closeable_stream_checks(
    session_pair: PairFactory,
) -> None:
    limits = Limits(initial_window=WINDOW)
    pair = await session_pair(edge_limits=limits, connector_limits=limits)

    async def make_streams() -> tuple[TunnelStream, TunnelStream]:
        return await pair.open_pair()

    async def make_clogged_streams() -> tuple[TunnelStream, TunnelStream]:
        edge_stream, connector_stream = await pair.open_pair()
        # Use up the credit both ways: the next send waits for the reader.
        await edge_stream.send_all(b"c" * WINDOW)
        await connector_stream.send_all(b"c" * WINDOW)
        return edge_stream, connector_stream

    await trio.testing.check_half_closeable_stream(make_streams, make_clogged_streams)
    # Every stream the checks opened was closed again, and the session is healthy.
    assert pair.edge.open_streams == 0
    assert pair.connector.open_streams == 0
    assert not pair.edge.closed
    assert not pair.connector.closed
