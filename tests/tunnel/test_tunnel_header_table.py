"""Indexed header pairs (tunnel.protocol.header_table): what crosses the wire, what the receiver
rebuilds, the bounds on both tables, and the errors of a peer whose table disagrees."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tunnel_pairs import deliver, registered_pair

from tunnel.protocol import (
    ErrorCode,
    HeadReceived,
    Limits,
    LocalProtocolError,
    ProtocolError,
    StreamOpened,
    TunnelConnection,
)
from tunnel.protocol.frames import HEADER, HEADER_SIZE, decode_hello, encode_hello
from tunnel.protocol.header_table import (
    ENTRY_OVERHEAD,
    IncomingHeaderTable,
    OutgoingHeaderTable,
    entry_size,
)

ASSERTION = ("cf-access-jwt-assertion", "eyJ" + "x" * 880)
AGENT = ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")


def head_frames(wire: bytes) -> list[dict[str, object]]:
    """The JSON of every HEAD frame in ``wire``, as sent."""
    found, position = [], 0
    while position < len(wire):
        length, frame_type, _flags, _stream = HEADER.unpack_from(wire, position)
        payload = wire[position + HEADER_SIZE : position + HEADER_SIZE + length]
        if frame_type == 0x05:
            found.append(json.loads(payload))
        position += HEADER_SIZE + length
    return found


def open_and_deliver(
    edge: TunnelConnection, connector: TunnelConnection, headers: list[tuple[str, str]]
) -> tuple[list[object], StreamOpened]:
    stream_id = edge.open_stream({"kind": "http", "headers": headers}, end_stream=True)
    wire = edge.data_to_send()
    (sent,) = head_frames(wire)
    (event,) = connector.receive_data(wire)
    assert isinstance(event, StreamOpened)
    assert event.stream_id == stream_id
    return sent["headers"], event  # type: ignore[return-value]


def test_a_pair_is_sent_whole_once_then_inserted_then_referenced() -> None:
    edge, connector = registered_pair()
    headers = [ASSERTION, AGENT, ("accept", "*/*")]
    first, opened = open_and_deliver(edge, connector, headers)
    assert first == [list(ASSERTION), list(AGENT), ["accept", "*/*"]]
    assert opened.head["headers"] == headers
    second, opened = open_and_deliver(edge, connector, headers)
    assert second == [[*ASSERTION, 0], [*AGENT, 1], ["accept", "*/*", 2]]
    assert opened.head["headers"] == headers
    third, opened = open_and_deliver(edge, connector, headers)
    assert third == [0, 1, 2]
    assert opened.head["headers"] == headers
    fourth, again = open_and_deliver(edge, connector, headers)
    assert fourth == [0, 1, 2]
    # Referenced pairs are the table's own tuples, shared by every head that names them.
    assert all(a is b for a, b in zip(opened.head["headers"], again.head["headers"], strict=True))


def test_the_answering_side_indexes_its_own_pairs() -> None:
    edge, connector = registered_pair()
    response = {"status": 200, "headers": [("Server", "nginx"), ("Content-Type", "text/plain")]}
    wires = []
    for _ in range(3):
        stream_id = edge.open_stream({"kind": "http", "headers": []}, end_stream=True)
        deliver(edge, connector)
        connector.send_head(stream_id, response, end_stream=True)
        wire = connector.data_to_send()
        wires.append(head_frames(wire)[0]["headers"])
        assert edge.receive_data(wire) == [HeadReceived(stream_id, response, True)]
    assert wires == [
        [["Server", "nginx"], ["Content-Type", "text/plain"]],
        [["Server", "nginx", 0], ["Content-Type", "text/plain", 1]],
        [0, 1],
    ]


@pytest.mark.parametrize(
    "name", ["cookie", "Cookie", "set-cookie", "Authorization", "proxy-authorization"]
)
def test_secrets_are_never_indexed(name: str) -> None:
    edge, connector = registered_pair()
    for _ in range(4):
        sent, opened = open_and_deliver(edge, connector, [(name, "session=abc"), AGENT])
        assert sent[0] == [name, "session=abc"]
        assert opened.head["headers"][0] == (name, "session=abc")


def test_a_pair_larger_than_a_quarter_of_the_table_is_never_indexed() -> None:
    table_size = 4096
    edge, connector = registered_pair(connector_limits=Limits(header_table_size=table_size))
    big = ("x-big", "v" * (table_size // 4 - ENTRY_OVERHEAD - len("x-big") + 1))
    fits = ("x-fits", "v" * (table_size // 4 - ENTRY_OVERHEAD - len("x-fits")))
    assert entry_size(*big) == table_size // 4 + 1
    for _ in range(3):
        sent, _opened = open_and_deliver(edge, connector, [big, fits])
    assert sent == [list(big), 0]


def test_a_peer_without_a_table_gets_literals_only() -> None:
    edge, connector = registered_pair(connector_limits=Limits(header_table_size=0))
    for _ in range(3):
        sent, opened = open_and_deliver(edge, connector, [ASSERTION])
        assert sent == [list(ASSERTION)]
        assert opened.head["headers"] == [ASSERTION]


def test_a_hello_without_a_table_size_means_no_table() -> None:
    payload = encode_hello(Limits())
    prefix, settings_json = payload[:5], json.loads(payload[5:])
    assert settings_json["header_table_size"] == 65536
    del settings_json["header_table_size"]
    _version, limits = decode_hello(prefix + json.dumps(settings_json).encode())
    assert limits.header_table_size == 0


def test_the_table_size_is_a_checked_limit() -> None:
    with pytest.raises(ValueError, match="header_table_size"):
        Limits(header_table_size=-1)
    assert Limits(header_table_size=0).header_table_size == 0


def test_eviction_keeps_both_tables_in_step() -> None:
    # Room for two assertion-sized entries: the third pushes out the oldest on both sides.
    size = 2 * entry_size(*ASSERTION) + 10
    edge, connector = registered_pair(connector_limits=Limits(header_table_size=size * 2))
    pairs = [("x-token", f"{n:04d}" + "t" * 400) for n in range(6)]
    for pair in pairs:
        for _ in range(3):
            sent, opened = open_and_deliver(edge, connector, [pair, pairs[0]])
            assert opened.head["headers"] == [pair, pairs[0]]
    # pairs[0] was sent in every head, yet evicted and re-inserted as newer ones came.
    assert isinstance(sent[0], int)


def test_a_head_too_large_to_send_inserts_nothing() -> None:
    edge, connector = registered_pair(connector_limits=Limits(max_header_block=2048))
    open_and_deliver(edge, connector, [ASSERTION])
    with pytest.raises(LocalProtocolError):
        edge.open_stream({"kind": "http", "headers": [ASSERTION, ("x-pad", "p" * 3000)]})
    sent, opened = open_and_deliver(edge, connector, [ASSERTION])
    assert sent == [[*ASSERTION, 0]]
    assert opened.head["headers"] == [ASSERTION]


def wire_head(headers: list[object], stream_id: int = 1, end_stream: bool = True) -> bytes:
    payload = json.dumps({"kind": "http", "headers": headers}).encode()
    return HEADER.pack(len(payload), 0x05, 1 if end_stream else 0, stream_id) + payload


def test_the_head_of_a_refused_stream_still_updates_the_table() -> None:
    _edge, connector = registered_pair(connector_limits=Limits(max_concurrent_streams=1))
    assert connector.receive_data(wire_head([list(AGENT)], stream_id=1)) == [
        StreamOpened(1, {"kind": "http", "headers": [AGENT]}, True)
    ]
    # One stream is open, so stream 3 is refused; the entry its head inserts is kept.
    assert connector.receive_data(wire_head([[*ASSERTION, 0]], stream_id=3)) == []
    connector.send_head(1, {"status": 200, "headers": []}, end_stream=True)
    assert connector.receive_data(wire_head([0], stream_id=5)) == [
        StreamOpened(5, {"kind": "http", "headers": [ASSERTION]}, True)
    ]


def test_a_response_head_for_a_reset_stream_still_updates_the_table() -> None:
    edge, connector = registered_pair()
    response = {"status": 200, "headers": [AGENT]}
    ids = []
    for _ in range(3):
        ids.append(edge.open_stream({"kind": "http", "headers": []}, end_stream=True))
    deliver(edge, connector)
    connector.send_head(ids[0], response, end_stream=True)
    edge.receive_data(connector.data_to_send())
    edge.reset_stream(ids[1], ErrorCode.CANCEL)  # the edge gives up on the second stream
    connector.send_head(ids[1], response, end_stream=True)  # crosses the RESET: inserts 0
    edge.receive_data(connector.data_to_send())  # dropped, but its insertion is kept
    connector.send_head(ids[2], response, end_stream=True)
    wire = connector.data_to_send()
    assert head_frames(wire)[0]["headers"] == [0]
    assert edge.receive_data(wire) == [HeadReceived(ids[2], response, True)]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([0], "header entry 0, not held"),
        ([["a", "b", 1]], "inserts header entry 1, expected 0"),
        ([["a", "b", 0], ["c", "d", 0]], "inserts header entry 0, expected 1"),
        ([["a", 7, 0]], "not text"),
        ([["x", "v" * 2000, 0]], "into a table of 1024"),
    ],
)
def test_a_head_the_table_cannot_follow_fails_the_connection(
    headers: list[object], message: str
) -> None:
    _edge, connector = registered_pair(connector_limits=Limits(header_table_size=1024))
    with pytest.raises(ProtocolError, match=message) as raised:
        connector.receive_data(wire_head(headers))
    assert raised.value.code == ErrorCode.PROTOCOL_ERROR
    assert connector.failed is not None


def test_a_reference_to_an_evicted_entry_is_refused() -> None:
    table = IncomingHeaderTable(2 * entry_size("a", "1"))
    table.resolve([["a", "1", 0], ["a", "2", 1]])
    assert table.resolve([["a", "3", 2]]) == [("a", "3")]
    assert table.resolve([1, 2]) == [("a", "2"), ("a", "3")]
    with pytest.raises(ProtocolError, match="entry 0, not held"):
        table.resolve([0])


def test_an_outgoing_header_must_be_a_pair() -> None:
    edge, _connector = registered_pair()
    with pytest.raises(LocalProtocolError, match="pair"):
        edge.open_stream({"kind": "http", "headers": [("a", "b", "c")]})


pairs = st.tuples(
    st.sampled_from(["a", "b", "x-token", "cookie", "user-agent"]),
    st.text(alphabet="abcdefgh", max_size=60),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 600),
    heads=st.lists(st.lists(pairs, max_size=6), max_size=40),
)
def test_any_sequence_of_heads_round_trips_within_the_table_bound(
    size: int, heads: list[list[tuple[str, str]]]
) -> None:
    outgoing, incoming = OutgoingHeaderTable(size), IncomingHeaderTable(size)
    for headers in heads:
        wire, inserted = outgoing.encode(headers)
        outgoing.commit(inserted)
        assert incoming.resolve(json.loads(json.dumps(wire))) == headers
        assert incoming.used == outgoing.used <= size
        assert incoming.entries == outgoing.entries <= max(size // ENTRY_OVERHEAD, 0)
