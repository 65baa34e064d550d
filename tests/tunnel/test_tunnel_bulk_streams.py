"""A bulk transfer and the small streams beside it: the window a bulk stream may keep in flight
while other streams open on its connection, which streams count as bulk, and the scheduling
rounds a bulk stream leaves to the others of its process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing
from tunnel_pairs import PairFactory, SessionPair, deliver, registered_pair

from tunnel.protocol import DataReceived, Limits, TunnelConnection, WindowUpdated
from tunnel.streams import BULK_BYTES, BULK_YIELD_ROUNDS, TunnelStream, small_streams_open

WINDOW, MAXIMUM = 4096, 16384


def _grown_pair() -> tuple[TunnelConnection, TunnelConnection, int]:
    """A stream whose reader kept up alone, its window grown to twice the initial one."""
    edge, connector = registered_pair(
        connector_limits=Limits(initial_window=WINDOW, max_window=MAXIMUM)
    )
    stream_id = edge.open_stream({"kind": "tcp"})
    edge.send_data(stream_id, b"x" * WINDOW)
    deliver(edge, connector)
    connector.consumed(stream_id, WINDOW)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, 2 * WINDOW)]
    return edge, connector, stream_id


def test_a_grown_window_goes_back_to_the_initial_one_once_another_stream_opens() -> None:
    edge, connector, bulk = _grown_pair()
    assert edge.send_credit(bulk) == 2 * WINDOW
    edge.send_data(bulk, b"y" * 2 * WINDOW)
    small = edge.open_stream({"kind": "http"})  # a small request behind the transfer
    events = deliver(edge, connector)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 2 * WINDOW
    # Half the grown window taken: that is exactly the credit held back, nothing goes out.
    connector.consumed(bulk, WINDOW)
    assert connector.data_to_send() == b""
    assert edge.send_credit(bulk) == 0
    # Small requests keep coming: the rest taken, the sender may have the initial window in
    # flight again, and no more.
    assert edge.open_stream({"kind": "http"}) > small
    deliver(edge, connector)
    connector.consumed(bulk, WINDOW)
    assert deliver(connector, edge) == [WindowUpdated(bulk, WINDOW)]
    assert edge.send_credit(bulk) == WINDOW


def _shrunk_pair() -> tuple[TunnelConnection, TunnelConnection, int]:
    """A grown stream whose two windows in flight were taken at once after a small request
    opened beside it."""
    edge, connector, bulk = _grown_pair()
    edge.send_data(bulk, b"y" * 2 * WINDOW)
    edge.open_stream({"kind": "http"})
    deliver(edge, connector)
    connector.consumed(bulk, 2 * WINDOW)
    return edge, connector, bulk


def test_credit_held_back_is_only_what_the_grown_window_added() -> None:
    edge, connector, bulk = _shrunk_pair()
    # 2 windows owed, 1 held back, 1 returned.
    assert deliver(connector, edge) == [WindowUpdated(bulk, WINDOW)]
    assert edge.send_credit(bulk) == WINDOW


def test_alone_again_the_window_grows_back() -> None:
    edge, connector, bulk = _shrunk_pair()
    deliver(connector, edge)
    # No stream opened since: a whole (initial) window taken alone doubles it again.
    edge.send_data(bulk, b"z" * WINDOW)
    deliver(edge, connector)
    connector.consumed(bulk, WINDOW)
    assert deliver(connector, edge) == [WindowUpdated(bulk, 2 * WINDOW)]
    assert edge.send_credit(bulk) == 2 * WINDOW


def test_streams_that_stay_open_without_new_ones_do_not_hold_a_transfer_back() -> None:
    """Idle WebSockets on the same connection open nothing new: the transfer still grows."""
    edge, connector = registered_pair(
        connector_limits=Limits(initial_window=WINDOW, max_window=MAXIMUM)
    )
    for _ in range(3):
        edge.open_stream({"kind": "http"})  # open before the transfer, and idle
    bulk = edge.open_stream({"kind": "tcp"})
    credit = WINDOW
    for _ in range(3):
        edge.send_data(bulk, b"x" * credit)
        deliver(edge, connector)
        connector.consumed(bulk, credit)
        deliver(connector, edge)
        credit = edge.send_credit(bulk)
    assert credit == MAXIMUM


def test_the_connector_holds_back_an_upload_the_same_way() -> None:
    edge, connector = registered_pair(
        edge_limits=Limits(initial_window=WINDOW, max_window=MAXIMUM)
    )
    download = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    connector.send_head(download, {"status": 200})
    connector.send_data(download, b"d" * WINDOW)
    deliver(connector, edge)
    edge.consumed(download, WINDOW)
    deliver(edge, connector)
    assert connector.send_credit(download) == 2 * WINDOW
    connector.send_data(download, b"d" * 2 * WINDOW)
    deliver(connector, edge)
    edge.open_stream({"kind": "http"})
    edge.consumed(download, 2 * WINDOW)
    events = deliver(edge, connector)
    assert WindowUpdated(download, WINDOW) in events
    assert connector.send_credit(download) == WINDOW


async def _move_bulk(edge_stream: TunnelStream, connector_stream: TunnelStream) -> None:
    """BULK_BYTES from the connector's side to the edge's, all taken."""

    async def send() -> None:
        await connector_stream.send_all(b"b" * BULK_BYTES)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        received = 0
        while received < BULK_BYTES:
            received += len(await edge_stream.receive_some())


async def test_a_stream_that_moved_a_window_counts_as_bulk_until_it_closes(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await pair.open_pair()
    small_edge, small_connector = await pair.open_pair()
    await small_connector.send_all(b"s" * 1000)
    assert await small_edge.receive_some() == b"s" * 1000
    assert pair.edge.bulk_streams == set()
    assert pair.connector.bulk_streams == set()
    await _move_bulk(edge_stream, connector_stream)
    assert pair.connector.bulk_streams == {connector_stream}  # it sent that much
    assert pair.edge.bulk_streams == {edge_stream}  # it took that much
    await edge_stream.aclose()
    await connector_stream.aclose()
    assert pair.edge.bulk_streams == set()
    assert pair.connector.bulk_streams == set()
    await small_edge.aclose()
    await small_connector.aclose()


async def _bulk_pair(pair: SessionPair) -> tuple[TunnelStream, TunnelStream]:
    """A stream pair that has moved BULK_BYTES from the connector to the edge."""
    edge_stream, connector_stream = await pair.open_pair()
    await _move_bulk(edge_stream, connector_stream)
    assert edge_stream in pair.edge.bulk_streams
    assert connector_stream in pair.connector.bulk_streams
    return edge_stream, connector_stream


async def _rounds_during(step: Callable[[], Awaitable[object]]) -> int:
    """Scheduling rounds that pass while ``step`` runs: a task beside it counts one per round."""
    rounds = 0
    done = False

    async def count() -> None:
        nonlocal rounds
        while not done:
            await trio.lowlevel.checkpoint()
            rounds += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count)
        await trio.lowlevel.checkpoint()  # the counter is running
        start = rounds
        await step()
        taken = rounds - start
        done = True
    return taken


async def test_a_bulk_stream_sits_out_rounds_while_a_small_stream_is_open(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await _bulk_pair(pair)
    assert not small_streams_open()
    # Alone in the process, a piece costs the usual single checkpoint.
    await connector_stream.send_all(b"c" * 1000)
    await trio.testing.wait_all_tasks_blocked()  # delivered: the receive below need not wait
    alone_receive = await _rounds_during(edge_stream.receive_some)
    alone_send = await _rounds_during(lambda: connector_stream.send_all(b"c" * 1000))
    assert alone_receive <= 2
    assert alone_send <= 2

    small_edge, small_connector = await pair.open_pair()
    assert small_streams_open()
    await connector_stream.send_all(b"c" * 1000)
    await trio.testing.wait_all_tasks_blocked()
    busy_receive = await _rounds_during(edge_stream.receive_some)
    busy_send = await _rounds_during(lambda: connector_stream.send_all(b"d" * 1000))
    # trio shuffles the order within a round, so a count may be one off either way.
    assert busy_receive - alone_receive in range(BULK_YIELD_ROUNDS - 1, BULK_YIELD_ROUNDS + 2)
    assert busy_send - alone_send in range(BULK_YIELD_ROUNDS - 1, BULK_YIELD_ROUNDS + 2)
    assert busy_receive >= alone_receive + 2
    assert busy_send >= alone_send + 2
    assert await edge_stream.receive_some() == b"d" * 1000
    # The small stream itself never waits on the transfer's behalf.
    await small_connector.send_all(b"s" * 100)
    await trio.testing.wait_all_tasks_blocked()
    assert await _rounds_during(small_edge.receive_some) <= 2

    await small_edge.aclose()
    await small_connector.aclose()
    assert not small_streams_open()
    await edge_stream.aclose()
    await connector_stream.aclose()


async def test_a_piece_survives_a_cancellation_during_the_rounds_sat_out(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, connector_stream = await _bulk_pair(pair)
    small_edge, small_connector = await pair.open_pair()
    await connector_stream.send_all(b"e" * 1000)
    await trio.testing.wait_all_tasks_blocked()
    received: list[bytes] = []
    with trio.CancelScope() as scope:

        async def cancel_next_round() -> None:
            await trio.lowlevel.checkpoint()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_next_round)
            received.append(await edge_stream.receive_some())
            await trio.lowlevel.checkpoint()  # where the cancellation lands
    assert scope.cancelled_caught
    assert received == [b"e" * 1000]
    await small_edge.aclose()
    await small_connector.aclose()
    await edge_stream.aclose()
    await connector_stream.aclose()
