"""WebSocket framing after the upgrade: RFC 6455 frames as wsproto writes and reads them,
masking across partial reads, fragments, control frames and protocol violations."""

from __future__ import annotations

import os
import struct

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, XorMaskerSimple

from tunnel.errors import MessageTooLarge, TransportClosed, TransportError
from tunnel.protocol.websocket import NATIVE_MASKING, apply_mask, load_native_masker, mask_in_place
from tunnel.transport import WebSocketTransport

KEY = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes = KEY) -> bytes:
    """A masked frame as a client sends it, built by hand."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = bytes((first, 0x80 | len(payload)))
    elif len(payload) < 1 << 16:
        header = bytes((first, 0x80 | 126)) + struct.pack(">H", len(payload))
    else:
        header = bytes((first, 0x80 | 127)) + struct.pack(">Q", len(payload))
    masked = bytearray(payload)
    mask_in_place(masked, key)
    return header + key + bytes(masked)


async def server_fed(data: bytes, *, piece: int, max_message_size: int = 1 << 22) -> tuple[
    WebSocketTransport, trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream
]:
    """A server transport whose peer delivers ``data`` ``piece`` bytes per read."""
    to_server = trio.testing.MemorySendStream()
    from_client = trio.testing.MemoryReceiveStream()
    stream = trio.StapledStream(to_server, from_client)
    # One piece is put in before each read, so each read returns exactly one piece.
    chunks = [data[offset : offset + piece] for offset in range(0, len(data), piece)]

    async def deliver_one_piece() -> None:
        if chunks:
            from_client.put_data(chunks.pop(0))
        else:
            from_client.put_eof()

    from_client.receive_some_hook = deliver_one_piece
    transport = WebSocketTransport(stream, client=False, max_message_size=max_message_size)
    return transport, to_server, from_client


@given(
    payload=st.binary(max_size=300),
    key=st.binary(min_size=4, max_size=4),
    start=st.integers(min_value=0, max_value=7),
)
def test_masking_matches_wsproto_and_undoes_itself(payload: bytes, key: bytes, start: int) -> None:
    data = bytearray(b"h" * start + payload)
    mask_in_place(data, key, start)
    assert bytes(data[start:]) == bytes(XorMaskerSimple(key).process(bytearray(payload)))
    assert bytes(data[:start]) == b"h" * start
    mask_in_place(data, key, start)
    assert bytes(data) == b"h" * start + payload


@given(payload=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4))
def test_apply_mask_agrees_with_the_pure_python_masking(payload: bytes, key: bytes) -> None:
    reference = bytearray(payload)
    mask_in_place(reference, key)
    assert apply_mask(payload, key) == bytes(reference)
    assert apply_mask(memoryview(bytearray(payload)), key) == bytes(reference)


def test_the_c_masking_is_installed_and_used() -> None:
    # The bulk path masks every byte twice; the pure-Python fallback is about 30x slower, so an
    # install that lost websockets' extension must show up here, not only in the benchmarks.
    native = load_native_masker()
    assert native is not None, "websockets' C extension is missing: pip install websockets"
    assert NATIVE_MASKING
    data = os.urandom(100_003)
    reference = bytearray(data)
    mask_in_place(reference, KEY)
    assert native(data, KEY) == bytes(reference)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
async def test_client_frames_are_read_by_wsproto(size: int) -> None:
    payload = os.urandom(size)
    to_server = trio.testing.MemorySendStream()
    client = WebSocketTransport(
        trio.StapledStream(to_server, trio.testing.MemoryReceiveStream()), client=True
    )
    await client.send_parts([payload[: size // 2], payload[size // 2 :]])
    wire = to_server.get_data_nowait()
    assert wire[1] & 0x80, "a client masks"
    reader = FrameProtocol(client=False, extensions=[])
    reader.receive_bytes(bytes(wire))
    frames = list(reader.received_frames())
    assert len(frames) == 1
    assert frames[0].opcode is Opcode.BINARY
    assert frames[0].message_finished
    assert frames[0].payload == payload


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
async def test_wsproto_client_frames_survive_any_read_size(piece: int) -> None:
    writer = FrameProtocol(client=True, extensions=[])
    message = os.urandom(70_000)
    wire = bytes(
        writer.send_data(message[:30_000], fin=False)
        + writer.send_data(message[30_000:], fin=True)
        + writer.send_data(b"second", fin=True)
    )
    server, _, _ = await server_fed(wire, piece=piece)
    assert await server.receive_message() == message
    assert await server.receive_message() == b"second"
    with pytest.raises(TransportClosed) as ended:
        await server.receive_message()
    assert ended.value.code == 1006


async def test_ping_between_fragments_is_answered_and_the_message_survives() -> None:
    wire = (
        client_frame(0x2, b"first half, ", fin=False)
        + client_frame(0x9, b"are you there")
        + client_frame(0x0, b"second half", fin=True)
    )
    server, to_server, _ = await server_fed(wire, piece=5)
    assert await server.receive_message() == b"first half, second half"
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(bytes(to_server.get_data_nowait()))
    pong = next(iter(reader.received_frames()))
    assert pong.opcode is Opcode.PONG
    assert pong.payload == b"are you there"


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (client_frame(0x2, b"x")[:1] + bytes((0x01,)) + b"x", "masking"),
        (bytes((0xC2,)) + client_frame(0x2, b"x")[1:], "reserved bits"),
        (client_frame(0x0, b"orphan"), "continuation"),
        (client_frame(0x2, b"a", fin=False) + client_frame(0x2, b"b"), "inside a fragmented"),
        (client_frame(0x9, b"p" * 126), "control frame"),
        (client_frame(0x3, b"?"), "unknown opcode"),
    ],
    ids=["unmasked", "rsv", "orphan-continuation", "interleaved", "long-ping", "opcode"],
)
async def test_protocol_violations_close_with_1002(wire: bytes, reason: str) -> None:
    server, to_server, _ = await server_fed(wire, piece=len(wire))
    with pytest.raises(TransportError, match=reason):
        await server.receive_message()
    reader = FrameProtocol(client=True, extensions=[])
    reader.receive_bytes(bytes(to_server.get_data_nowait()))
    close = next(iter(reader.received_frames()))
    assert close.opcode is Opcode.CLOSE
    assert close.payload[0] == 1002  # wsproto parses a close payload into (code, reason)


async def test_oversized_message_is_refused_from_the_frame_header() -> None:
    header = bytes((0x82, 0x80 | 127)) + struct.pack(">Q", 1 << 40) + KEY
    server, to_server, _ = await server_fed(header, piece=len(header), max_message_size=1000)
    with pytest.raises(MessageTooLarge):
        await server.receive_message()
    assert b"\x03\xf1" in to_server.get_data_nowait()  # close code 1009


async def test_fragments_count_toward_the_message_limit() -> None:
    wire = client_frame(0x2, b"a" * 600, fin=False) + client_frame(0x0, b"b" * 600)
    server, _, _ = await server_fed(wire, piece=len(wire), max_message_size=1000)
    with pytest.raises(MessageTooLarge):
        await server.receive_message()


async def test_partial_payloads_are_delivered_as_they_arrive() -> None:
    message = os.urandom(10_000)
    wire = client_frame(0x2, message)
    server, _, _ = await server_fed(wire, piece=4096)
    received = b""
    reads = 0
    while len(received) < len(message):
        received += await server.receive_data()
        reads += 1
    assert received == message
    assert reads > 1, "a large frame is handed on before all of it arrived"
