"""TunnelSession over real WebSocket transports on in-memory streams."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from tunnel_pairs import REGISTER_INFO, ManualPeer, PairFactory, websocket_pair

from tunnel.errors import (
    ConnectionLost,
    HeartbeatTimeout,
    ProtocolViolation,
    RegistrationRefused,
    SessionClosed,
    SessionDraining,
    StreamLimitReached,
    StreamReset,
    TransportClosed,
)
from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    HelloReceived,
    Limits,
    Registered,
    Role,
    StreamOpened,
    TunnelConnection,
)
from tunnel.protocol.frames import HEADER, Frame, FrameType
from tunnel.session import READER_PAUSE_FACTOR, SessionTiming, TunnelSession
from tunnel.streams import TunnelStream


async def read_all(stream: TunnelStream) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some():
        received += chunk
    return bytes(received)


async def test_request_and_response_cross_the_tunnel(session_pair: PairFactory) -> None:
    async def origin(stream: TunnelStream) -> None:
        body = await read_all(stream)
        assert stream.head["target"] == "/echo"
        await stream.send_head({"status": 200, "headers": [["content-type", "text/plain"]]})
        await stream.send_all(body.upper())
        await stream.send_eof()

    pair = await session_pair(handle_stream=origin)
    head = {"kind": "http", "method": "POST", "target": "/echo", "host": "app.example.com"}
    async with await pair.edge.open_stream(head) as stream:
        await stream.send_all(b"hello " * 100_000)
        await stream.send_eof()
        response = await stream.receive_head()
        assert response["status"] == 200
        assert await read_all(stream) == b"HELLO " * 100_000
    assert pair.edge.counters.bytes_sent > 600_000
    assert pair.connector.counters.bytes_received == pair.edge.counters.bytes_sent
    assert pair.edge.counters.streams_total == 1


async def test_many_concurrent_streams_share_one_session(session_pair: PairFactory) -> None:
    async def origin(stream: TunnelStream) -> None:
        body = await read_all(stream)
        await stream.send_head({"status": 200})
        await stream.send_all(body[::-1])
        await stream.send_eof()

    pair = await session_pair(handle_stream=origin)
    results: dict[int, bytes] = {}

    async def one(n: int) -> None:
        async with await pair.edge.open_stream({"kind": "http", "n": n}) as stream:
            await stream.send_all(str(n).encode() * 1000)
            await stream.send_eof()
            await stream.receive_head()
            results[n] = await read_all(stream)

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(one, n)
    assert results == {n: (str(n).encode() * 1000)[::-1] for n in range(50)}
    # Frames of many streams were coalesced into far fewer WebSocket messages.
    assert pair.edge.counters.messages_sent < 150


async def test_registration_refusal_is_typed_and_permanent(nursery: trio.Nursery) -> None:
    client, server = await websocket_pair()
    edge = TunnelSession(server, TunnelConnection(Role.EDGE))
    connector = TunnelSession(client, TunnelConnection(Role.CONNECTOR))
    nursery.start_soon(edge.run)
    nursery.start_soon(connector.run)

    async def refuse() -> None:
        await edge.accept_registration()
        await edge.refuse("tunnel_deleted", "tunnel was deleted", permanent=True)

    nursery.start_soon(refuse)
    with pytest.raises(RegistrationRefused) as caught:
        await connector.register(REGISTER_INFO)
    assert (caught.value.code, caught.value.permanent) == ("tunnel_deleted", True)
    await connector.wait_closed()
    await edge.wait_closed()
    assert connector.close_reason is not None
    assert connector.close_reason.code is ErrorCode.NO_ERROR


async def test_reset_by_origin_reaches_the_edge_with_its_code(session_pair: PairFactory) -> None:
    async def unreachable(stream: TunnelStream) -> None:
        stream.reset(ErrorCode.ORIGIN_UNREACHABLE)

    pair = await session_pair(handle_stream=unreachable)
    stream = await pair.edge.open_stream({"kind": "http"})
    with pytest.raises(StreamReset) as caught:
        await stream.receive_head()
    assert caught.value.code is ErrorCode.ORIGIN_UNREACHABLE
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"x")
    await stream.aclose()


async def test_failing_handler_resets_its_stream_only(session_pair: PairFactory) -> None:
    async def handler(stream: TunnelStream) -> None:
        if stream.head.get("fail"):
            raise RuntimeError("origin handler bug")
        await stream.send_head({"status": 204}, end_stream=True)

    pair = await session_pair(handle_stream=handler)
    bad = await pair.edge.open_stream({"kind": "http", "fail": True}, end_stream=True)
    good = await pair.edge.open_stream({"kind": "http"}, end_stream=True)
    with pytest.raises(StreamReset) as caught:
        await bad.receive_head()
    assert caught.value.code is ErrorCode.INTERNAL_ERROR
    assert await good.receive_head() == {"status": 204}
    assert await good.receive_some() == b""
    await bad.aclose()
    await good.aclose()
    assert not pair.edge.closed


async def test_slow_reader_does_not_stall_other_streams(session_pair: PairFactory) -> None:
    window = 64 * 1024
    limits = Limits(initial_window=window)
    pair = await session_pair(edge_limits=limits, connector_limits=limits)
    bulk_edge, bulk_origin = await pair.open_pair()
    quick_edge, quick_origin = await pair.open_pair()
    bulk_done = trio.Event()

    async def flood() -> None:
        await bulk_origin.send_all(b"b" * (10 * window))
        bulk_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        # Nobody reads the bulk stream: its sender is stuck on credit, its buffer is capped.
        assert not bulk_done.is_set()
        assert bulk_edge.buffered == window
        assert pair.connector.connection.send_credit(bulk_origin.stream_id) == 0
        # Meanwhile another stream on the same session works both ways.
        for round_trip in range(20):
            await quick_edge.send_all(b"ping %d" % round_trip)
            assert await quick_origin.receive_some() == b"ping %d" % round_trip
            await quick_origin.send_all(b"pong %d" % round_trip)
            assert await quick_edge.receive_some() == b"pong %d" % round_trip
        assert not bulk_done.is_set()
        # Reading the bulk stream releases its sender.
        received = 0
        while received < 10 * window:
            received += len(await bulk_edge.receive_some())
        await bulk_done.wait()
    for stream in (bulk_edge, bulk_origin, quick_edge, quick_origin):
        await stream.aclose()


async def test_goaway_drains_in_flight_streams_and_refuses_new_ones(
    session_pair: PairFactory,
) -> None:
    pair = await session_pair()
    edge_stream, origin_stream = await pair.open_pair()
    pair.edge.go_away(ErrorCode.NO_ERROR, "edge restarting")
    assert pair.edge.draining
    with pytest.raises(SessionDraining):
        await pair.edge.open_stream({"kind": "http"})
    # The in-flight stream still carries data both ways.
    await edge_stream.send_all(b"request")
    await edge_stream.send_eof()
    assert await read_all(origin_stream) == b"request"
    await origin_stream.send_all(b"response")
    await origin_stream.send_eof()
    assert await read_all(edge_stream) == b"response"
    assert not pair.edge.closed
    await origin_stream.aclose()
    await edge_stream.aclose()
    with trio.fail_after(5):
        await pair.edge.wait_drained()
        await pair.edge.wait_closed()
        await pair.connector.wait_closed()
    assert pair.edge.close_reason is not None
    assert pair.edge.close_reason.code is ErrorCode.NO_ERROR
    assert pair.connector.close_reason is not None
    assert pair.connector.close_reason.code is ErrorCode.NO_ERROR


async def test_goaway_from_the_connector_stops_the_edge_opening(session_pair: PairFactory) -> None:
    pair = await session_pair()
    edge_stream, origin_stream = await pair.open_pair()
    pair.connector.go_away(ErrorCode.NO_ERROR, "connector shutting down")
    # Bytes queued after the GOAWAY arrive after it: once they are read, the edge knows.
    await origin_stream.send_all(b"last words")
    await origin_stream.aclose()
    assert await read_all(edge_stream) == b"last words"
    assert pair.edge.draining
    with pytest.raises(SessionDraining):
        await pair.edge.open_stream({"kind": "http"})
    await edge_stream.aclose()
    with trio.fail_after(5):
        await pair.edge.wait_closed()
        await pair.connector.wait_closed()


async def test_stream_limit_of_the_peer_is_reported(session_pair: PairFactory) -> None:
    pair = await session_pair(connector_limits=Limits(max_concurrent_streams=1))
    first = await pair.edge.open_stream({"kind": "tcp"})
    with pytest.raises(StreamLimitReached):
        await pair.edge.open_stream({"kind": "tcp"})
    first.reset(ErrorCode.CANCEL)
    second = await pair.edge.open_stream({"kind": "tcp"})
    await second.aclose()


async def test_closing_a_session_fails_its_open_streams(session_pair: PairFactory) -> None:
    pair = await session_pair()
    edge_stream, origin_stream = await pair.open_pair()
    await pair.connector.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await origin_stream.receive_some()
    with trio.fail_after(5):
        await pair.edge.wait_closed()
    with pytest.raises(SessionClosed):
        await edge_stream.receive_some()
    with pytest.raises(SessionClosed):
        await pair.edge.open_stream({"kind": "http"})


async def test_heartbeat_keeps_a_healthy_idle_session_alive(
    session_pair: PairFactory, autojump_clock: trio.testing.MockClock
) -> None:
    pair = await session_pair(timing=SessionTiming(heartbeat_interval=5, heartbeat_timeout=15))
    await trio.sleep(120)
    assert not pair.edge.closed
    assert not pair.connector.closed
    # Pings were exchanged all along.
    assert pair.edge.counters.messages_sent >= 120 / 5


async def test_heartbeat_timeout_when_the_peer_stops_answering(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = await websocket_pair()
    edge = TunnelSession(
        server,
        TunnelConnection(Role.EDGE),
        timing=SessionTiming(heartbeat_interval=5, heartbeat_timeout=15),
    )
    nursery.start_soon(edge.run)
    peer = ManualPeer(client, TunnelConnection(Role.CONNECTOR))
    peer.connection.register(REGISTER_INFO)
    await peer.flush()

    async def accept() -> None:
        await edge.accept_registration()
        edge.registered("conn-1", "edge-1")

    nursery.start_soon(accept)
    events = await peer.receive_until(Registered)
    assert isinstance(events[0], HelloReceived)
    stream = await edge.open_stream({"kind": "tcp"})
    started = trio.current_time()
    # The peer goes silent: it neither reads nor answers pings from here on.
    await edge.wait_closed()
    elapsed = trio.current_time() - started
    assert isinstance(edge.close_reason, HeartbeatTimeout)
    assert 14 <= elapsed <= 16
    with pytest.raises(HeartbeatTimeout):
        await stream.receive_head()
    await client.aclose()


async def test_garbage_after_the_upgrade_closes_with_the_protocol_error(
    nursery: trio.Nursery,
) -> None:
    client, server = await websocket_pair()
    edge = TunnelSession(server, TunnelConnection(Role.EDGE))
    nursery.start_soon(edge.run)
    # A frame header announcing 2 GiB: refused before any payload arrives.
    await client.send_message(HEADER.pack(2**31, FrameType.DATA, 0, 1))
    peer = TunnelConnection(Role.CONNECTOR)
    seen: list[Event] = []

    async def read_until_closed() -> None:
        while True:  # until the edge closes the WebSocket after its GOAWAY
            seen.extend(peer.receive_data(await client.receive_message()))

    with trio.fail_after(5), pytest.raises(TransportClosed):
        await read_until_closed()
    goaways = [event for event in seen if isinstance(event, GoAwayReceived)]
    assert goaways
    assert goaways[0].code is ErrorCode.FRAME_TOO_LARGE
    await edge.wait_closed()
    assert isinstance(edge.close_reason, ProtocolViolation)
    assert edge.close_reason.code is ErrorCode.FRAME_TOO_LARGE
    await client.aclose()


async def test_random_garbage_is_a_protocol_violation(nursery: trio.Nursery) -> None:
    client, server = await websocket_pair()
    connector = TunnelSession(client, TunnelConnection(Role.CONNECTOR))
    nursery.start_soon(connector.run)
    await server.send_message(b"\x00\x00\x00\x02\x77\x00\x00\x00\x00\x00zz")
    with trio.fail_after(5):
        await connector.wait_closed()
    assert isinstance(connector.close_reason, ProtocolViolation)
    assert connector.close_reason.code is ErrorCode.PROTOCOL_ERROR
    await server.aclose()


async def test_outgoing_buffer_is_bounded_when_the_peer_reads_slowly(
    nursery: trio.Nursery,
) -> None:
    # Lockstep streams: a send completes only when the other side reads.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client, server = await websocket_pair(client_stream=client_stream, server_stream=server_stream)
    max_outgoing = 32 * 1024
    edge = TunnelSession(server, TunnelConnection(Role.EDGE), max_outgoing=max_outgoing)
    nursery.start_soon(edge.run)
    peer = ManualPeer(client, TunnelConnection(Role.CONNECTOR))
    peer.connection.register(REGISTER_INFO)
    await peer.flush()
    info = await edge.accept_registration()
    assert info == REGISTER_INFO
    edge.registered("conn-1", "edge-1")
    await peer.receive_until(Registered)
    stream = await edge.open_stream({"kind": "tcp"})
    sent = trio.Event()

    async def send_big() -> None:
        await stream.send_all(b"d" * 200_000)
        sent.set()

    nursery.start_soon(send_big)
    await trio.testing.wait_all_tasks_blocked()
    assert not sent.is_set(), "the sender must wait while the peer does not read"
    assert edge.connection.outgoing_size <= max_outgoing + 16 * 1024
    received = 0
    with trio.fail_after(5):
        while received < 200_000:
            for event in await peer.receive_events():
                if isinstance(event, DataReceived):
                    received += len(event.data)
                    peer.connection.consumed(event.stream_id, len(event.data))
                elif not isinstance(event, StreamOpened):
                    raise AssertionError(f"unexpected {event}")
            await peer.flush()
        await sent.wait()
    assert received == 200_000
    await client.aclose()
    with trio.fail_after(5):
        await edge.wait_closed()
    assert isinstance(edge.close_reason, ConnectionLost)


async def test_peer_disconnect_loses_open_streams(session_pair: PairFactory) -> None:
    pair = await session_pair()
    edge_stream, _ = await pair.open_pair()
    await pair.connector.transport.stream.aclose()
    with trio.fail_after(5):
        await pair.edge.wait_closed()
    assert isinstance(pair.edge.close_reason, ConnectionLost)
    with pytest.raises(ConnectionLost):
        await edge_stream.receive_some()


async def test_peer_that_floods_without_reading_is_not_buffered_without_bound(
    nursery: trio.Nursery,
) -> None:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client, server = await websocket_pair(client_stream=client_stream, server_stream=server_stream)
    max_outgoing = 4096
    edge = TunnelSession(server, TunnelConnection(Role.EDGE), max_outgoing=max_outgoing)
    nursery.start_soon(edge.run)
    peer = ManualPeer(client, TunnelConnection(Role.CONNECTOR))
    pings = Frame(FrameType.PING, 0, 0, b"12345678").encode() * 100
    flooded = 0

    async def flood() -> None:
        nonlocal flooded
        await peer.flush()  # HELLO, then PINGs whose ACKs it never reads
        with contextlib.suppress(TransportClosed):
            while True:
                await client.send_message(pings)
                flooded += 1

    nursery.start_soon(flood)
    # Everything comes to rest only because the edge stops reading a peer that never reads.
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
    assert flooded > 4
    assert edge.connection.outgoing_size < READER_PAUSE_FACTOR * max_outgoing + len(pings) * 2
    await client_stream.aclose()
    with trio.fail_after(5):
        await edge.wait_closed()
    assert isinstance(edge.close_reason, ConnectionLost)


async def test_closing_a_session_that_never_ran_still_says_goodbye() -> None:
    client, server = await websocket_pair()
    edge = TunnelSession(server, TunnelConnection(Role.EDGE))
    await edge.aclose()
    await edge.wait_closed()
    peer = TunnelConnection(Role.CONNECTOR)
    events = peer.receive_data(await client.receive_message())
    assert [type(event) for event in events] == [HelloReceived, GoAwayReceived]
    with pytest.raises(TransportClosed):
        await client.receive_message()
    await client.aclose()


async def test_edge_can_revoke_a_live_connection(nursery: trio.Nursery) -> None:
    client, server = await websocket_pair()
    edge = TunnelSession(server, TunnelConnection(Role.EDGE))
    parked: list[TunnelStream] = []

    async def park(stream: TunnelStream) -> None:
        parked.append(stream)
        await trio.sleep_forever()

    connector = TunnelSession(client, TunnelConnection(Role.CONNECTOR), handle_stream=park)
    nursery.start_soon(edge.run)
    nursery.start_soon(connector.run)

    async def accept() -> None:
        info = await edge.accept_registration()
        assert info.conn_index == 3
        edge.registered("conn-9", "edge-1")

    nursery.start_soon(accept)
    registered = await connector.register(
        tunnel_id="t-1", connector_id="c-1", conn_index=3, version="0.1.0", features=["x"]
    )
    assert registered.connection_id == "conn-9"
    stream = await edge.open_stream({"kind": "tcp"})
    await edge.refuse("tunnel_deleted", "the tunnel was deleted", permanent=True)
    with trio.fail_after(5):
        await connector.wait_closed()
    assert connector.refusal is not None
    assert (connector.refusal.code, connector.refusal.permanent) == ("tunnel_deleted", True)
    with pytest.raises(SessionClosed):
        await stream.receive_head()
