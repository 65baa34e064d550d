"""RFC 6455 frame pieces, sans-IO: masking, frame headers, opcodes and close codes.

``tunnel.transport`` drives WebSocket framing itself after the upgrade (wsproto serves the
upgrade only); what needs no I/O lives here.

Masking: every byte the connector sends (which includes every response body) is masked, and
the edge unmasks it, so the XOR is on the bulk path twice. The `websockets` package ships a C
``apply_mask`` (SIMD, tens of GB/s here); it is loaded straight from its extension file,
because importing the ``websockets`` package itself pulls in sockets, threads and package
metadata that neither this sans-IO package nor the connector's idle memory should carry. Without
it (a pure-Python install of websockets), masking runs ``bytes.translate`` over the four byte
lanes of the payload: about 1.2 GB/s, and about a fifth of the CPU of a bulk transfer.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import struct
from collections.abc import Callable
from pathlib import Path

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
    """XOR ``data[start:]`` with the repeating 4-byte ``key`` (RFC 6455 masking), in pure
    Python: the reference ``apply_mask`` is checked against, and its fallback."""
    for lane in range(4):
        index = start + lane
        if index >= len(data):
            break
        data[index::4] = data[index::4].translate(_xor_table(key[lane]))


Masker = Callable[[bytes | bytearray | memoryview, bytes], bytes]


def _translate_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    masked = bytearray(data)
    mask_in_place(masked, key)
    return bytes(masked)


def load_native_masker() -> Masker | None:
    """websockets' C ``apply_mask``, loaded from its extension file alone; None without it."""
    try:
        package = importlib.util.find_spec("websockets")
    except (ImportError, ValueError):
        return None
    if package is None or not package.submodule_search_locations:
        return None
    for directory in package.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(directory) / f"speedups{suffix}"
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader("websockets.speedups", str(path))
            spec = importlib.util.spec_from_file_location(
                "websockets.speedups", path, loader=loader
            )
            if spec is None:
                continue
            try:
                module = importlib.util.module_from_spec(spec)
                loader.exec_module(module)
                native: Masker = module.apply_mask
                if native(b"\x00\x01\x02\x03\x04", b"\x0f\x0f\x0f\x0f") != b"\x0f\x0e\r\x0c\x0b":
                    continue
            except (ImportError, OSError, AttributeError, TypeError, ValueError):
                continue
            return native
    return None


_NATIVE_MASKER = load_native_masker()
apply_mask: Masker = _NATIVE_MASKER or _translate_mask
"""``data`` XOR the repeating 4-byte ``key``, as new bytes: C when available (see above)."""
NATIVE_MASKING = _NATIVE_MASKER is not None


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
