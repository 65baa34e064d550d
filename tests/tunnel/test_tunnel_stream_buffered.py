"""What a stream already holds can be taken without waiting: a response that arrived whole
(head, body and end in one message) is answered without another trip through the scheduler."""

from __future__ import annotations

import trio
import trio.testing
from tunnel_pairs import PairFactory

from tunnel.protocol import ErrorCode
from tunnel.streams import TunnelStream


async def test_a_response_that_arrived_whole_is_taken_without_waiting(
    session_pair: PairFactory,
) -> None:
    async def origin(stream: TunnelStream) -> None:
        await stream.send_head({"status": 200})
        await stream.send_all(b"whole body")
        await stream.send_eof()

    pair = await session_pair(handle_stream=origin)
    stream = await pair.edge.open_stream({"kind": "http"}, end_stream=True)
    assert await stream.receive_head() == {"status": 200}
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()  # the origin is done, its frames are in
    assert stream.buffered == len(b"whole body")
    assert stream.take_buffered(4) == b"whol"
    assert stream.take_buffered() == b"e body"
    assert stream.take_buffered() == b""
    assert stream.remote_finished
    await stream.aclose()


async def test_nothing_is_taken_from_a_stream_still_waiting_or_reset(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, origin_stream = await pair.open_pair()
    assert edge_stream.take_buffered() == b""
    assert not edge_stream.remote_finished
    origin_stream.reset(ErrorCode.ORIGIN_UNREACHABLE)
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
    assert edge_stream.take_buffered() == b""
    assert not edge_stream.remote_finished, "a reset stream did not finish cleanly"
    await edge_stream.aclose()
