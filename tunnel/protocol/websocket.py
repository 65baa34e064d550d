"""RFC 6455 frame pieces, sans-IO: masking, frame headers, opcodes and close codes.

``tunnel.transport`` drives WebSocket framing itself after the upgrade (wsproto serves the
upgrade only); what needs no I/O lives here. Masking runs ``bytes.translate`` over the four
byte lanes of the payload, so the XOR happens in C at close to memory-copy speed.
"""

from __future__ import annotations

import struct

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005
CLOSE_TOO_BIG = 1009

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
FIN = 0x80
MASKED = 0x80
MAX_CONTROL_PAYLOAD = 125
U16 = struct.Struct(">H")
U64 = struct.Struct(">Q")

# One XOR table per key byte, built when first needed.
_XOR_TABLES: list[bytes | None] = [None] * 256


def _xor_table(key_byte: int) -> bytes:
    table = _XOR_TABLES[key_byte]
    if table is None:
        table = _XOR_TABLES[key_byte] = bytes(b ^ key_byte for b in range(256))
    return table


def mask_in_place(data: bytearray, key: bytes, start: int = 0) -> None:
    """XOR ``data[start:]`` with the repeating 4-byte ``key`` (RFC 6455 masking)."""
    for lane in range(4):
        index = start + lane
        if index >= len(data):
            break
        data[index::4] = data[index::4].translate(_xor_table(key[lane]))


def frame_header(opcode: int, length: int, mask_key: bytes | None) -> bytes:
    """A final frame's header for ``length`` payload bytes, with the key when masked."""
    mask_bit = MASKED if mask_key is not None else 0
    if length <= MAX_CONTROL_PAYLOAD:
        header = bytes((FIN | opcode, mask_bit | length))
    elif length < 1 << 16:
        header = bytes((FIN | opcode, mask_bit | 126)) + U16.pack(length)
    else:
        header = bytes((FIN | opcode, mask_bit | 127)) + U64.pack(length)
    return header + mask_key if mask_key is not None else header
