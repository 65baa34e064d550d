"""Property tests: codecs round-trip, and no input makes the parser misbehave."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunnel_pairs import registered_pair

from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Event,
    Frame,
    FrameReader,
    FrameType,
    Limits,
    ProtocolError,
    RegisterInfo,
    Role,
    TunnelConnection,
)
from tunnel.protocol.frames import (
    decode_goaway,
    decode_hello,
    decode_refused,
    decode_register,
    decode_registered,
    decode_u32,
    encode_goaway,
    encode_hello,
    encode_refused,
    encode_register,
    encode_registered,
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

frame_types = st.sampled_from(list(FrameType))
u32 = st.integers(min_value=0, max_value=2**32 - 1)
frames = st.builds(
    Frame,
    type=frame_types,
    flags=st.integers(min_value=0, max_value=255),
    stream_id=u32,
    payload=st.binary(max_size=2048),
)


def split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@PROPERTY_SETTINGS
@given(st.lists(frames, max_size=8), st.lists(st.integers(min_value=0), max_size=10))
def test_frames_round_trip_in_any_split(sent: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(frame.encode() for frame in sent)
    reader = FrameReader(max_frame_size=4096, max_header_block=4096)
    received: list[Frame] = []
    for piece in split_points(wire, cuts):
        received.extend(reader.feed(piece))
    assert received == sent
    assert reader.buffered == 0


limits = st.builds(
    Limits,
    max_frame_size=st.integers(1024, 1 << 24),
    max_concurrent_streams=st.integers(0, 2**31 - 1),
    initial_window=st.integers(1, 2**31 - 1),
    max_header_block=st.integers(1024, 1 << 24),
    header_table_size=st.integers(0, 1 << 24),
)
text = st.text(max_size=40)


@PROPERTY_SETTINGS
@given(limits)
def test_hello_round_trips(value: Limits) -> None:
    assert decode_hello(encode_hello(value)) == (1, value)


@PROPERTY_SETTINGS
@given(
    st.builds(
        RegisterInfo, text, text, st.integers(0, 2**40), text, st.lists(text, max_size=5).map(tuple)
    )
)
def test_register_round_trips(info: RegisterInfo) -> None:
    assert decode_register(encode_register(info)) == info


@PROPERTY_SETTINGS
@given(text, text, st.booleans())
def test_registered_and_refused_round_trip(a: str, b: str, permanent: bool) -> None:
    assert decode_registered(encode_registered(a, b)) == (a, b)
    assert decode_refused(encode_refused(a, b, permanent)) == (a, b, permanent)


@PROPERTY_SETTINGS
@given(u32, st.sampled_from(list(ErrorCode)), text)
def test_goaway_and_u32_round_trip(last: int, code: ErrorCode, message: str) -> None:
    assert decode_goaway(encode_goaway(last, code, message)) == (last, code, message)
    assert decode_u32(last.to_bytes(4, "big"), "WINDOW_UPDATE") == last


def feed_checked(connection: TunnelConnection, pieces: list[bytes]) -> None:
    """Every call returns events or raises ProtocolError; after an error, always that."""
    failure: ProtocolError | None = None
    for piece in pieces:
        try:
            events = connection.receive_data(piece)
        except ProtocolError as error:
            failure = error
            continue
        assert failure is None, "a failed connection must keep raising"
        assert all(isinstance(event, Event) for event in events)
    if failure is not None:
        assert isinstance(failure.code, ErrorCode)
        assert connection.failed is failure


@PROPERTY_SETTINGS
@given(st.sampled_from(list(Role)), st.binary(max_size=4096), st.lists(st.integers(0), max_size=8))
def test_arbitrary_bytes_give_events_or_protocol_error(
    role: Role, data: bytes, cuts: list[int]
) -> None:
    feed_checked(TunnelConnection(role), split_points(data, cuts))


json_payloads = st.one_of(
    st.binary(max_size=300),
    st.just(b"{}"),
    st.just(b'{"status": 200}'),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3).map(
        lambda d: str(d).replace("'", '"').encode()
    ),
)
hostile_frames = st.builds(
    Frame,
    type=frame_types,
    flags=st.integers(0, 3),
    stream_id=st.integers(0, 9),
    payload=st.one_of(
        json_payloads, u32.map(lambda n: n.to_bytes(4, "big")), st.binary(max_size=8)
    ),
)


@PROPERTY_SETTINGS
@given(st.booleans(), st.lists(hostile_frames, max_size=12), st.lists(st.integers(0), max_size=8))
def test_plausible_frames_after_registration_give_events_or_protocol_error(
    at_edge: bool, sent: list[Frame], cuts: list[int]
) -> None:
    edge, connector = registered_pair()
    edge.open_stream({"kind": "tcp"})
    connector.receive_data(edge.data_to_send())
    target = edge if at_edge else connector
    feed_checked(target, split_points(b"".join(frame.encode() for frame in sent), cuts))


@PROPERTY_SETTINGS
@given(
    st.lists(st.binary(min_size=0, max_size=5000), min_size=1, max_size=10),
    st.lists(st.integers(0), max_size=20),
)
def test_stream_data_arrives_intact_in_any_split(chunks: list[bytes], cuts: list[int]) -> None:
    edge, connector = registered_pair(connector_limits=Limits(max_frame_size=1024))
    stream_id = edge.open_stream({"kind": "tcp"})
    connector.receive_data(edge.data_to_send())
    for chunk in chunks:
        edge.send_data(stream_id, chunk)
    edge.send_end(stream_id)
    received = bytearray()
    ended = False
    for piece in split_points(edge.data_to_send(), cuts):
        for event in connector.receive_data(piece):
            assert isinstance(event, DataReceived)
            assert not ended
            received += event.data
            ended = event.end_stream
            connector.consumed(stream_id, len(event.data))
    assert bytes(received) == b"".join(chunks)
    assert ended


@PROPERTY_SETTINGS
@given(st.binary(min_size=1, max_size=4096), st.integers(min_value=1, max_value=64))
def test_a_frame_fed_from_a_reused_buffer_keeps_its_bytes(payload: bytes, piece: int) -> None:
    """A caller that reads into one bytearray and feeds it again and again (each piece then
    overwritten) still gets the payload it sent."""
    sent = Frame(FrameType.DATA, 0, 1, payload)
    wire = sent.encode()
    reader = FrameReader(max_frame_size=4096, max_header_block=4096)
    reused = bytearray(piece)
    received: list[Frame] = []
    for start in range(0, len(wire), piece):
        chunk = wire[start : start + piece]
        reused[: len(chunk)] = chunk
        received.extend(reader.feed(memoryview(reused)[: len(chunk)]))
        reused[:] = b"\xff" * len(reused)  # the caller's next read overwrites it
    assert received == [sent]
    assert reader.buffered == 0


@PROPERTY_SETTINGS
@given(
    st.lists(frames, min_size=1, max_size=6),
    st.lists(st.integers(min_value=0), max_size=10),
    st.lists(st.booleans(), min_size=1, max_size=12),
)
def test_pieces_of_bytes_and_of_a_resized_bytearray_mix(
    sent: list[Frame], cuts: list[int], as_bytearray: list[bool]
) -> None:
    """Immutable pieces are kept as views, the others copied: a caller that empties and
    resizes its bytearray after each call can (no view of it is left), and every frame still
    arrives whole, whichever kinds the pieces alternate between."""
    wire = b"".join(frame.encode() for frame in sent)
    reader = FrameReader(max_frame_size=4096, max_header_block=4096)
    received: list[Frame] = []
    reused = bytearray()
    for index, piece in enumerate(split_points(wire, cuts)):
        if as_bytearray[index % len(as_bytearray)]:
            reused[:] = piece
            received.extend(reader.feed(reused))
            reused.clear()  # raises BufferError while a view of it is held
            reused += b"\xff" * 7
        else:
            received.extend(reader.feed(piece))
    assert received == sent
    assert reader.buffered == 0


def test_a_frame_spread_over_immutable_pieces_is_joined_from_views_of_them() -> None:
    """The bulk path: the pieces of a frame that spans several reads are not copied one by
    one; the only copy of the payload is the join when the frame completes."""
    payload = bytes(range(256)) * 64
    wire = Frame(FrameType.DATA, 0, 1, payload).encode()
    first, second, third = wire[:5000], wire[5000:9000], wire[9000:] + b"\x00"
    reader = FrameReader(max_frame_size=1 << 16, max_header_block=4096)
    assert reader.feed(first) == []
    assert reader.feed(second) == []
    kept = reader._parts
    assert len(kept) == 2
    assert all(
        (part.obj is piece) if isinstance(part, memoryview) else (part is piece)
        for part, piece in zip(kept, (first, second), strict=True)
    )
    assert reader.feed(third) == [Frame(FrameType.DATA, 0, 1, payload)]
    assert reader.buffered == 1  # the start of the next frame's header
