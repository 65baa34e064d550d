"""What a stream copies. ``send_all``: a bulk transfer's pieces arrive as ``bytes`` (a read
from a socket) and are queued as they are, while a caller's buffer that may change after the
call is copied before it returns, so the peer always gets what was passed. ``receive_some``:
small received pieces are joined into one read, large ones are handed on as they came."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tunnel_pairs import PairFactory

from tunnel.protocol import TunnelConnection
from tunnel.streams import UNJOINED_PIECE, TunnelStream


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every payload object handed to the protocol's ``send_data``, in order."""
    seen: list[object] = []
    original = TunnelConnection.send_data

    def recording(
        self: TunnelConnection, stream_id: int, data: bytes | bytearray | memoryview,
        end_stream: bool = False,
    ) -> None:
        seen.append(data)
        original(self, stream_id, data, end_stream)

    monkeypatch.setattr(TunnelConnection, "send_data", recording)
    return seen


async def _receive_exactly(stream: TunnelStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        received += await stream.receive_some()
    return bytes(received)


async def test_whole_bytes_are_queued_without_a_copy(
    session_pair: PairFactory, queued: list[object]
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    piece = bytes(range(256)) * 1024  # 256 KiB, one bulk read's worth
    await connector_stream.send_all(piece)
    assert len(queued) == 1
    assert queued[0] is piece
    assert await _receive_exactly(edge_stream, len(piece)) == piece


async def test_a_buffer_changed_after_the_call_still_arrives_as_passed(
    session_pair: PairFactory, queued: list[object]
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    buffer = bytearray(b"a" * 5000)
    await connector_stream.send_all(buffer)
    assert len(queued) == 1
    buffer[:] = b"b" * 5000  # the caller reuses its buffer before the writer has run
    assert await _receive_exactly(edge_stream, 5000) == b"a" * 5000


async def test_bytes_beyond_the_credit_go_in_pieces_and_arrive_whole(
    session_pair: PairFactory, queued: list[object]
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    credit = connector_stream._conn.send_credit(connector_stream.stream_id)
    payload = bytes(range(251)) * (2 * credit // 251 + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connector_stream.send_all, payload)
        assert await _receive_exactly(edge_stream, len(payload)) == payload
    assert len(queued) >= 2
    assert all(item is not payload for item in queued)


async def test_large_received_pieces_are_handed_on_one_by_one(session_pair: PairFactory) -> None:
    """Joining a bulk transfer's frames for one read would only copy them."""
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    first, second = b"a" * UNJOINED_PIECE, b"b" * (UNJOINED_PIECE + 1)
    await connector_stream.send_all(first)
    await connector_stream.send_all(second)
    await trio.testing.wait_all_tasks_blocked()
    assert await edge_stream.receive_some() == first
    assert await edge_stream.receive_some() == second


async def test_small_received_pieces_are_joined_up_to_the_first_large_one(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    for piece in (b"1" * 100, b"2" * 200, b"3" * UNJOINED_PIECE, b"4" * 50):
        await connector_stream.send_all(piece)
    await trio.testing.wait_all_tasks_blocked()
    assert await edge_stream.receive_some() == b"1" * 100 + b"2" * 200
    assert await edge_stream.receive_some() == b"3" * UNJOINED_PIECE
    assert await edge_stream.receive_some() == b"4" * 50
