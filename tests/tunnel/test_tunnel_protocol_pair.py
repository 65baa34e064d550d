"""Edge and connector state machines talking to each other, no I/O."""

from __future__ import annotations

import pytest
from tunnel_pairs import REGISTER_INFO, deliver, registered_pair

from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Frame,
    FrameReader,
    FrameType,
    GoAwayReceived,
    HeadReceived,
    Limits,
    LocalProtocolError,
    PingAcked,
    PingReceived,
    ProtocolError,
    Refused,
    Role,
    StreamAborted,
    StreamClosedError,
    StreamOpened,
    TunnelConnection,
    WindowUpdated,
)


def test_handshake_exchanges_hello_register_and_registered() -> None:
    edge, connector = registered_pair()
    assert edge.peer_limits == Limits()
    assert connector.peer_version == 1


def test_refusal_reaches_the_connector_and_blocks_streams() -> None:
    edge = TunnelConnection(Role.EDGE)
    connector = TunnelConnection(Role.CONNECTOR)
    connector.register(REGISTER_INFO)
    deliver(connector, edge)
    edge.refuse("bad_credentials", "unknown secret", True)
    events = deliver(edge, connector)
    assert events[-1] == Refused("bad_credentials", "unknown secret", True)
    assert connector.remote_goaway
    with pytest.raises(LocalProtocolError):
        edge.open_stream({"kind": "http"})


def test_request_and_response_flow_both_ways_then_close() -> None:
    edge, connector = registered_pair()
    request = {"kind": "http", "method": "POST", "target": "/upload", "headers": [["a", "b"]]}
    stream_id = edge.open_stream(request)
    assert stream_id == 1
    edge.send_data(stream_id, b"request body", end_stream=True)
    assert deliver(edge, connector) == [
        StreamOpened(1, {**request, "headers": [("a", "b")]}, False),
        DataReceived(1, b"request body", True),
    ]
    connector.send_head(stream_id, {"status": 201, "headers": []})
    connector.send_data(stream_id, b"created")
    connector.send_end(stream_id)
    assert deliver(connector, edge) == [
        HeadReceived(1, {"status": 201, "headers": []}, False),
        DataReceived(1, b"created", False),
        DataReceived(1, b"", True),
    ]
    assert edge.open_streams == 0
    assert connector.open_streams == 0


def test_stream_ids_are_odd_and_increasing() -> None:
    edge, connector = registered_pair()
    ids = [edge.open_stream({"n": n}) for n in range(4)]
    assert ids == [1, 3, 5, 7]
    events = deliver(edge, connector)
    assert [e.stream_id for e in events if isinstance(e, StreamOpened)] == ids


def test_each_side_ends_independently() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "tcp"}, end_stream=True)
    deliver(edge, connector)
    with pytest.raises(StreamClosedError):
        edge.send_data(stream_id, b"late")
    connector.send_head(stream_id, {"status": 200})
    connector.send_data(stream_id, b"still flowing")
    assert deliver(connector, edge)[-1] == DataReceived(stream_id, b"still flowing", False)
    assert edge.stream_is_open(stream_id)
    assert connector.stream_is_open(stream_id)
    connector.send_end(stream_id)
    deliver(connector, edge)
    assert not edge.stream_is_open(stream_id)
    assert not connector.stream_is_open(stream_id)


def test_head_only_response_can_end_the_stream() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "http"}, end_stream=True)
    deliver(edge, connector)
    connector.send_head(stream_id, {"status": 204}, end_stream=True)
    assert deliver(connector, edge) == [HeadReceived(stream_id, {"status": 204}, True)]
    assert edge.open_streams == 0
    assert connector.open_streams == 0


def test_reset_reaches_the_peer_and_late_frames_are_ignored() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "http"})
    deliver(edge, connector)
    connector.reset_stream(stream_id, ErrorCode.ORIGIN_UNREACHABLE)
    # The edge had data in flight when the reset crossed it on the wire.
    edge.send_data(stream_id, b"in flight")
    in_flight = edge.data_to_send()
    assert deliver(connector, edge) == [
        StreamAborted(stream_id, ErrorCode.ORIGIN_UNREACHABLE, by_peer=True)
    ]
    assert connector.receive_data(in_flight) == []
    assert connector.data_to_send() == b""
    with pytest.raises(StreamClosedError):
        edge.send_data(stream_id, b"more")
    edge.reset_stream(stream_id, ErrorCode.CANCEL)  # already gone: no frame
    assert edge.data_to_send() == b""


def test_window_is_consumed_and_returned_in_batches() -> None:
    window = 4096
    edge, connector = registered_pair(
        connector_limits=Limits(initial_window=window, max_window=window)
    )
    stream_id = edge.open_stream({"kind": "tcp"})
    assert edge.send_credit(stream_id) == window
    edge.send_data(stream_id, b"x" * window)
    assert edge.send_credit(stream_id) == 0
    with pytest.raises(LocalProtocolError) as caught:
        edge.send_data(stream_id, b"y")
    assert caught.value.code is ErrorCode.FLOW_CONTROL_ERROR
    events = deliver(edge, connector)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == window
    connector.consumed(stream_id, window // 4 - 1)
    assert connector.data_to_send() == b"", "less than a quarter owed: no update yet"
    connector.consumed(stream_id, 1)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, window // 4)]
    assert edge.send_credit(stream_id) == window // 4
    connector.consumed(stream_id, 3 * window // 4)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, 3 * window // 4)]
    assert edge.send_credit(stream_id) == window


def test_window_updates_flow_toward_the_connector_too() -> None:
    window = 2048
    edge, connector = registered_pair(edge_limits=Limits(initial_window=window, max_window=window))
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    connector.send_head(stream_id, {"status": 200})
    connector.send_data(stream_id, b"z" * window)
    assert connector.send_credit(stream_id) == 0
    deliver(connector, edge)
    edge.consumed(stream_id, window)
    assert deliver(edge, connector) == [WindowUpdated(stream_id, window)]
    assert connector.send_credit(stream_id) == window


def test_a_stream_whose_reader_keeps_up_gets_its_window_doubled_up_to_the_maximum() -> None:
    window, maximum = 4096, 16384
    edge, connector = registered_pair(
        connector_limits=Limits(initial_window=window, max_window=maximum)
    )
    stream_id = edge.open_stream({"kind": "tcp"})
    edge.send_data(stream_id, b"x" * window)
    deliver(edge, connector)
    connector.consumed(stream_id, window // 2)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, window // 2)], "no growth yet"
    connector.consumed(stream_id, window // 2)
    # A whole window taken: the credit comes back and the window doubles (4096 more).
    assert deliver(connector, edge) == [WindowUpdated(stream_id, window // 2 + window)]
    assert edge.send_credit(stream_id) == 2 * window
    edge.send_data(stream_id, b"y" * 2 * window)
    deliver(edge, connector)
    connector.consumed(stream_id, 2 * window)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, 4 * window)]
    assert edge.send_credit(stream_id) == maximum
    edge.send_data(stream_id, b"z" * maximum)
    deliver(edge, connector)
    connector.consumed(stream_id, maximum)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, maximum)], "capped"
    assert edge.send_credit(stream_id) == maximum


def test_a_reader_that_does_not_keep_up_never_grows_the_window() -> None:
    window = 4096
    edge, connector = registered_pair(
        connector_limits=Limits(initial_window=window, max_window=1 << 20)
    )
    stream_id = edge.open_stream({"kind": "tcp"})
    edge.send_data(stream_id, b"x" * window)
    deliver(edge, connector)
    connector.consumed(stream_id, window - 1)
    assert deliver(connector, edge) == [WindowUpdated(stream_id, window - 1)]
    assert edge.send_credit(stream_id) == window - 1
    with pytest.raises(LocalProtocolError):  # the grown window never came
        edge.send_data(stream_id, b"y" * window)


def test_max_window_stays_local_and_out_of_hello() -> None:
    limits = Limits(max_window=1 << 22)
    assert "max_window" not in limits.as_json()
    edge, _connector = registered_pair(connector_limits=limits)
    assert edge.peer_limits is not None
    assert edge.peer_limits.initial_window == limits.initial_window


def test_data_is_split_at_the_peer_frame_size() -> None:
    edge, connector = registered_pair(connector_limits=Limits(max_frame_size=1024))
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    payload = bytes(range(256)) * 20  # 5120 bytes
    edge.send_data(stream_id, payload, end_stream=True)
    wire = edge.data_to_send()
    frames = FrameReader(65536, 65536).feed(wire)
    assert [len(f.payload) for f in frames] == [1024] * 5
    assert [f.flags for f in frames] == [0, 0, 0, 0, 1]
    events = connector.receive_data(wire)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == payload
    assert isinstance(events[-1], DataReceived)
    assert events[-1].end_stream


def test_ping_is_answered_automatically() -> None:
    edge, connector = registered_pair()
    edge.ping(b"12345678")
    assert deliver(edge, connector) == [PingReceived(b"12345678")]
    assert deliver(connector, edge) == [PingAcked(b"12345678")]
    connector.ping(b"abcdefgh")
    assert deliver(connector, edge) == [PingReceived(b"abcdefgh")]
    assert deliver(edge, connector) == [PingAcked(b"abcdefgh")]
    with pytest.raises(LocalProtocolError):
        edge.ping(b"short")


def test_goaway_from_connector_stops_new_streams_but_not_old_ones() -> None:
    edge, connector = registered_pair()
    first = edge.open_stream({"n": 1})
    deliver(edge, connector)
    second = edge.open_stream({"n": 2})
    unprocessed = edge.data_to_send()
    connector.go_away(ErrorCode.NO_ERROR, "restarting")
    assert deliver(connector, edge) == [
        StreamAborted(second, ErrorCode.REFUSED_STREAM, by_peer=True),
        GoAwayReceived(first, ErrorCode.NO_ERROR, "restarting"),
    ]
    # The stream the connector never saw is refused when it arrives late.
    assert connector.receive_data(unprocessed) == []
    assert FrameReader(65536, 65536).feed(connector.data_to_send())[0].type is FrameType.RESET
    with pytest.raises(LocalProtocolError) as caught:
        edge.open_stream({"n": 3})
    assert caught.value.code is ErrorCode.REFUSED_STREAM
    edge.send_data(first, b"still fine", end_stream=True)
    assert deliver(edge, connector) == [DataReceived(first, b"still fine", True)]


def test_goaway_from_edge_is_reported_to_the_connector() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"n": 1})
    deliver(edge, connector)
    edge.go_away(ErrorCode.NO_ERROR, "edge shutting down")
    assert deliver(edge, connector) == [GoAwayReceived(0, ErrorCode.NO_ERROR, "edge shutting down")]
    with pytest.raises(LocalProtocolError):
        edge.open_stream({"n": 2})
    connector.send_head(stream_id, {"status": 200}, end_stream=True)
    assert deliver(connector, edge) == [HeadReceived(stream_id, {"status": 200}, True)]


@pytest.mark.parametrize(
    ("role", "action"),
    [
        (Role.CONNECTOR, lambda c: c.open_stream({"kind": "http"})),
        (Role.EDGE, lambda c: c.register(REGISTER_INFO)),
        (Role.CONNECTOR, lambda c: c.registered("c", "e")),
        (Role.EDGE, lambda c: c.open_stream({"kind": "http"})),  # not registered yet
    ],
)
def test_role_rules_are_enforced_locally(role: Role, action: object) -> None:
    connection = TunnelConnection(role)
    with pytest.raises(LocalProtocolError):
        action(connection)  # type: ignore[operator]


def test_response_rules_are_enforced_locally() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "http"})
    deliver(edge, connector)
    with pytest.raises(LocalProtocolError):
        edge.send_head(stream_id, {"status": 200})
    with pytest.raises(LocalProtocolError):
        connector.send_data(stream_id, b"body before head")
    connector.send_head(stream_id, {"status": 200})
    with pytest.raises(LocalProtocolError):
        connector.send_head(stream_id, {"status": 500})


def test_refused_can_revoke_a_registered_connection_once() -> None:
    edge, connector = registered_pair()
    edge.refuse("tunnel_deleted", "gone", True)
    assert deliver(edge, connector) == [Refused("tunnel_deleted", "gone", True)]
    with pytest.raises(LocalProtocolError):
        edge.refuse("tunnel_deleted", "again", True)
    with pytest.raises(LocalProtocolError):
        edge.open_stream({"kind": "http"})
    # A second REFUSED from a broken edge is a protocol error at the connector.
    second = Frame(FrameType.REFUSED, 0, 0, b'{"code":"x","message":"y","permanent":true}')
    with pytest.raises(ProtocolError):
        connector.receive_data(second.encode())
