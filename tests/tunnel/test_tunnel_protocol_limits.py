"""Every limit is enforced before the offending bytes are buffered."""

from __future__ import annotations

import struct

import pytest
from tunnel_pairs import deliver, registered_pair

from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Frame,
    FrameReader,
    FrameType,
    GoAwayReceived,
    Limits,
    LocalProtocolError,
    ProtocolError,
    Role,
    StreamOpened,
    TunnelConnection,
)
from tunnel.protocol.frames import HEADER


def goaway_code(connection: TunnelConnection) -> ErrorCode:
    frames = FrameReader(1 << 20, 1 << 20).feed(connection.data_to_send())
    goaways = [f for f in frames if f.type is FrameType.GOAWAY]
    assert goaways, "a fatal error must queue a GOAWAY"
    return ErrorCode(struct.unpack(">II", goaways[-1].payload[:8])[1])


def test_limits_have_the_documented_defaults() -> None:
    limits = Limits()
    assert limits.max_frame_size == 262144
    assert limits.max_concurrent_streams == 16384
    assert limits.initial_window == 262144
    assert limits.max_header_block == 65536


@pytest.mark.parametrize(
    "kwargs",
    [{"max_frame_size": 10}, {"initial_window": 0}, {"max_header_block": 1 << 30}],
)
def test_limits_reject_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Limits(**kwargs)


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    _edge, connector = registered_pair()
    header_only = HEADER.pack(Limits().max_frame_size + 1, FrameType.DATA, 0, 1)
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(header_only)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert goaway_code(connector) is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError):
        connector.receive_data(b"anything after the failure")


def test_oversized_frame_is_refused_even_when_the_header_arrives_in_pieces() -> None:
    connection = TunnelConnection(Role.EDGE, limits=Limits(max_frame_size=2048))
    header = HEADER.pack(2049, FrameType.HELLO, 0, 0)
    assert connection.receive_data(header[:7]) == []
    with pytest.raises(ProtocolError) as caught:
        connection.receive_data(header[7:])
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_oversized_head_is_a_connection_error_from_its_header() -> None:
    _edge, connector = registered_pair(connector_limits=Limits(max_header_block=2048))
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(HEADER.pack(4096, FrameType.HEAD, 0, 1))
    assert caught.value.code is ErrorCode.HEAD_TOO_LARGE
    assert goaway_code(connector) is ErrorCode.HEAD_TOO_LARGE


def test_sender_refuses_a_head_over_the_peer_limit() -> None:
    edge, _ = registered_pair(connector_limits=Limits(max_header_block=2048))
    with pytest.raises(LocalProtocolError) as caught:
        edge.open_stream({"kind": "http", "headers": [["x-big", "v" * 3000]]})
    assert caught.value.code is ErrorCode.HEAD_TOO_LARGE
    assert edge.open_streams == 0


def test_data_beyond_the_window_is_a_flow_control_error() -> None:
    edge, connector = registered_pair(connector_limits=Limits(initial_window=1024))
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    overrun = Frame(FrameType.DATA, 0, stream_id, b"x" * 1025).encode()
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(overrun)
    assert caught.value.code is ErrorCode.FLOW_CONTROL_ERROR
    assert goaway_code(connector) is ErrorCode.FLOW_CONTROL_ERROR


def test_window_overrun_across_several_frames() -> None:
    edge, connector = registered_pair(connector_limits=Limits(initial_window=1024))
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    chunk = Frame(FrameType.DATA, 0, stream_id, b"x" * 600).encode()
    assert connector.receive_data(chunk) == [DataReceived(stream_id, b"x" * 600, False)]
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(chunk)
    assert caught.value.code is ErrorCode.FLOW_CONTROL_ERROR


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.DATA, 0, 7, b"data"),
        Frame(FrameType.WINDOW_UPDATE, 0, 5, struct.pack(">I", 10)),
        Frame(FrameType.RESET, 0, 2, struct.pack(">I", 0)),
        Frame(FrameType.DATA, 0, 0, b"stream zero"),
    ],
    ids=["data", "window-update", "reset-even-id", "data-stream-zero"],
)
def test_frames_for_never_opened_streams_are_protocol_errors(frame: Frame) -> None:
    edge, connector = registered_pair()
    edge.open_stream({"kind": "tcp"})  # stream 1 exists; the frames name others
    deliver(edge, connector)
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(frame.encode())
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR


def test_edge_refuses_frames_for_streams_it_never_opened() -> None:
    edge, _ = registered_pair()
    with pytest.raises(ProtocolError) as caught:
        edge.receive_data(Frame(FrameType.HEAD, 0, 1, b"{}").encode())
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR


def test_frames_for_finished_streams_are_dropped() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    edge.reset_stream(stream_id, ErrorCode.CANCEL)
    deliver(edge, connector)
    late = Frame(FrameType.DATA, 0, stream_id, b"x" * 100).encode()
    late += Frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", 5)).encode()
    late += Frame(FrameType.RESET, 0, stream_id, struct.pack(">I", 7)).encode()
    assert edge.receive_data(late) == []
    assert connector.receive_data(late) == []


def test_too_many_streams_are_reset_not_delivered() -> None:
    edge, connector = registered_pair(connector_limits=Limits(max_concurrent_streams=2))
    edge.open_stream({"n": 1})
    edge.open_stream({"n": 2})
    with pytest.raises(LocalProtocolError) as caught:
        edge.open_stream({"n": 3})
    assert caught.value.code is ErrorCode.TOO_MANY_STREAMS
    deliver(edge, connector)
    # A peer that ignores the advertised limit gets a reset, and the stream's data is dropped.
    rogue = Frame(FrameType.HEAD, 0, 5, b'{"n": 3}').encode()
    rogue += Frame(FrameType.DATA, 0, 5, b"payload").encode()
    assert connector.receive_data(rogue) == []
    frames = FrameReader(65536, 65536).feed(connector.data_to_send())
    assert [(f.type, f.stream_id) for f in frames] == [(FrameType.RESET, 5)]
    assert struct.unpack(">I", frames[0].payload)[0] == ErrorCode.TOO_MANY_STREAMS
    assert connector.open_streams == 2


def test_window_update_cannot_overflow_or_be_zero() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "tcp"})
    deliver(edge, connector)
    zero = Frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", 0)).encode()
    with pytest.raises(ProtocolError) as caught:
        edge.receive_data(zero)
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "tcp"})
    huge = Frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", 2**31)).encode()
    with pytest.raises(ProtocolError) as caught:
        edge.receive_data(huge)
    assert caught.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_hello_must_come_first() -> None:
    connection = TunnelConnection(Role.EDGE)
    with pytest.raises(ProtocolError) as caught:
        connection.receive_data(Frame(FrameType.PING, 0, 0, b"12345678").encode())
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR
    assert goaway_code(connection) is ErrorCode.PROTOCOL_ERROR


def test_streams_need_registration() -> None:
    edge = TunnelConnection(Role.EDGE)
    connector = TunnelConnection(Role.CONNECTOR)
    connector.receive_data(edge.data_to_send())  # HELLO only
    with pytest.raises(ProtocolError):
        connector.receive_data(Frame(FrameType.HEAD, 0, 1, b"{}").encode())


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b"[" * 50000 + b"]" * 50000, b"\xff\xfe"],
    ids=["garbage", "array", "deep-nesting", "bad-utf8"],
)
def test_malformed_heads_are_protocol_errors(payload: bytes) -> None:
    _edge, connector = registered_pair(
        connector_limits=Limits(max_header_block=1 << 17, max_frame_size=1 << 17)
    )
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(Frame(FrameType.HEAD, 0, 1, payload).encode())
    assert caught.value.code is ErrorCode.PROTOCOL_ERROR


def test_data_after_the_peers_end_is_stream_closed() -> None:
    edge, connector = registered_pair()
    stream_id = edge.open_stream({"kind": "tcp"}, end_stream=True)
    events = deliver(edge, connector)
    assert events == [StreamOpened(stream_id, {"kind": "tcp"}, True)]
    connector.send_head(stream_id, {"status": 200})
    with pytest.raises(ProtocolError) as caught:
        connector.receive_data(Frame(FrameType.DATA, 0, stream_id, b"x").encode())
    assert caught.value.code is ErrorCode.STREAM_CLOSED


def test_goaway_with_an_error_code_is_reported() -> None:
    edge, connector = registered_pair()
    connector.go_away(ErrorCode.INTERNAL_ERROR, "crashing")
    assert deliver(connector, edge) == [GoAwayReceived(0, ErrorCode.INTERNAL_ERROR, "crashing")]
