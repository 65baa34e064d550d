"""What an idle stream holds, and the single-waiter rules that let it hold so little."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tunnel_pairs import PairFactory


async def test_a_stream_has_no_attribute_dict(session_pair: PairFactory) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    for stream in (edge_stream, connector_stream):
        assert not hasattr(stream, "__dict__")
        with pytest.raises(AttributeError):
            stream.label = "extra"  # type: ignore[attr-defined]
    await edge_stream.aclose()
    await connector_stream.aclose()


async def test_waiting_for_the_head_counts_as_receiving(session_pair: PairFactory) -> None:
    pair = await session_pair()
    stream = await pair.edge.open_stream({"kind": "http", "host": "app.test"})
    origin = await pair.incoming.receive()
    refused: list[trio.BusyResourceError] = []

    async def second_receiver() -> None:
        try:
            await stream.receive_some(100)
        except trio.BusyResourceError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_head)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second_receiver)
        await trio.testing.wait_all_tasks_blocked()
        await origin.send_head({"status": 200})
        await origin.send_all(b"then the body")
    assert len(refused) == 1
    assert stream.response_head == {"status": 200}
    assert await stream.receive_some() == b"then the body"


async def test_a_cancelled_wait_leaves_the_stream_usable(session_pair: PairFactory) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    with trio.move_on_after(0) as scope:
        await connector_stream.receive_some(10)
    assert scope.cancelled_caught
    with trio.CancelScope() as waiting:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connector_stream.receive_some, 10)
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
    await edge_stream.send_all(b"after two cancelled waits")
    assert await connector_stream.receive_some() == b"after two cancelled waits"
    await connector_stream.send_all(b"and back")
    assert await edge_stream.receive_some() == b"and back"
