"""Frame layout and payload codecs.

A frame is a 10-byte header ``>IBBI`` (payload length, type, flags, stream id)
followed by the payload. Only heads and the connection-level control frames carry
JSON; DATA, WINDOW_UPDATE, RESET and PING are fixed binary layouts so the hot path
never touches a JSON codec.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .errors import ErrorCode, LocalProtocolError, ProtocolError
from .events import RegisterInfo
from .limits import Limits

HEADER = struct.Struct(">IBBI")
HEADER_SIZE = HEADER.size
U32 = struct.Struct(">I")
GOAWAY_PREFIX = struct.Struct(">II")
HELLO_PREFIX = struct.Struct(">3sH")
MAGIC = b"TGT"
PROTOCOL_VERSION = 1
PING_PAYLOAD_SIZE = 8
MAX_U32 = (1 << 32) - 1

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1


class FrameType(IntEnum):
    HELLO = 0x01
    REGISTER = 0x02
    REGISTERED = 0x03
    REFUSED = 0x04
    HEAD = 0x05
    DATA = 0x06
    WINDOW_UPDATE = 0x07
    RESET = 0x08
    PING = 0x09
    GOAWAY = 0x0A


CONNECTION_FRAMES = frozenset(
    {
        FrameType.HELLO,
        FrameType.REGISTER,
        FrameType.REGISTERED,
        FrameType.REFUSED,
        FrameType.PING,
        FrameType.GOAWAY,
    }
)
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
# FrameType by code without an enum lookup per frame (codes are checked against _KNOWN_TYPES).
_FRAME_TYPES = {int(t): t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    flags: int
    stream_id: int
    payload: bytes

    def encode(self) -> bytes:
        return HEADER.pack(len(self.payload), self.type, self.flags, self.stream_id) + self.payload


class FrameReader:
    """Incremental frame parser that refuses oversized frames from their header alone.

    It never holds more than one incomplete frame (at most the header plus
    ``max_frame_size`` bytes), whatever the peer announces. A frame whose payload arrives in
    pieces (a bulk transfer's 256 KiB frames span several reads) keeps the pieces as they
    came and joins them once, when the last one arrives, instead of copying each piece into a
    buffer and the payload out of it again. Pieces of an immutable ``bytes`` input are kept as
    views of it, so until the frame completes the reads they came from stay alive as well.
    """

    __slots__ = ("_buffer", "_max_frame_size", "_max_header_block", "_need", "_parts",
                 "_pending")

    def __init__(self, max_frame_size: int, max_header_block: int) -> None:
        self._buffer = bytearray()  # an incomplete header (or a short frame's start)
        self._max_frame_size = max_frame_size
        self._max_header_block = max_header_block
        self._pending: tuple[FrameType, int, int] | None = None  # a frame awaiting payload
        self._parts: list[bytes | bytearray | memoryview] = []
        self._need = 0

    @property
    def buffered(self) -> int:
        if self._pending is None:
            return len(self._buffer)
        return HEADER_SIZE + sum(len(part) for part in self._parts)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        # Pieces of an immutable ``bytes`` are kept by reference (a slice of it is a view, not a
        # copy); anything else is copied before it is kept, as a caller may reuse its buffer.
        immutable = type(data) is bytes
        if self._pending is not None:
            size = len(data)
            if size < self._need:
                self._parts.append(data if immutable else bytes(data))
                self._need -= size
                return frames
            view = memoryview(data)
            self._parts.append(view[: self._need])
            frame_type, flags, stream_id = self._pending
            frames.append(Frame(frame_type, flags, stream_id, b"".join(self._parts)))
            rest: bytes | memoryview = view[self._need :]
            self._pending, self._parts, self._need = None, [], 0
            if not immutable:
                rest = bytes(rest)
                view.release()
            if not rest:
                return frames
            data = rest
        buffer = self._buffer
        source: bytes | bytearray | memoryview
        if buffer:
            buffer += data
            source = buffer
            immutable = False
        elif isinstance(data, (bytes, bytearray)) or immutable:
            # Common case: the message holds whole frames; parse it without copying it first.
            source = data
        else:
            source = bytes(data)
            immutable = True
        position = 0
        end = len(source)
        unpack_header = HEADER.unpack_from
        max_frame_size = self._max_frame_size
        with memoryview(source) as view:
            while end - position >= HEADER_SIZE:
                length, frame_type, flags, stream_id = unpack_header(source, position)
                if length > max_frame_size:
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds max_frame_size {max_frame_size}",
                    )
                if frame_type not in _KNOWN_TYPES:
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR, f"unknown frame type {frame_type:#x}"
                    )
                if frame_type == FrameType.HEAD and length > self._max_header_block:
                    raise ProtocolError(
                        ErrorCode.HEAD_TOO_LARGE,
                        f"head of {length} bytes exceeds max_header_block {self._max_header_block}",
                    )
                start = position + HEADER_SIZE
                if end - start < length:
                    # The payload continues in later pieces: keep what came of it.
                    self._pending = (_FRAME_TYPES[frame_type], flags, stream_id)
                    if end == start:
                        self._parts = []
                    elif immutable:
                        self._parts = [view[start:end]]
                    else:
                        self._parts = [bytes(view[start:end])]
                    self._need = length - (end - start)
                    position = end
                    break
                position = start + length
                frames.append(
                    Frame(_FRAME_TYPES[frame_type], flags, stream_id, bytes(view[start:position]))
                )
        if source is buffer:
            del buffer[:position]
        elif position < end:
            buffer += source[position:]
        return frames


# -- payload codecs -------------------------------------------------------------------------


# Encoders are built once (json.dumps with options builds one per call). The ASCII form
# (non-ASCII as \u escapes) encodes several times faster; the UTF-8 form is the compact one
# for the rare head whose escapes would push it over a size limit.
_JSON_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _not_serialisable(value: object) -> object:
    raise TypeError(f"a {type(value).__name__} is not JSON-serialisable")


# ``JSONEncoder.encode`` builds a new C encoder for every call, which costs more than encoding a
# head. This one is built once; it keeps no markers (nothing we encode can refer to itself,
# and a self-reference would end in a RecursionError, reported like any other failure).
_encode_ascii: Callable[[object, int], Sequence[str]] | None = None
if c_make_encoder is not None:  # CPython's accelerator; pure Python falls back to the class
    _encode_ascii = c_make_encoder(
        None, _not_serialisable, encode_basestring_ascii, None, ":", ",", False, False, True
    )


def encode_json(value: dict[str, Any], *, compact: bool = False) -> bytes:
    """JSON for a payload; ``compact`` spends more time to write non-ASCII text unescaped."""
    try:
        if compact:
            return _JSON_UTF8.encode(value).encode("utf-8")
        if _encode_ascii is not None:
            return "".join(_encode_ascii(value, 0)).encode("ascii")
        return json.dumps(value, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError, RecursionError) as error:
        raise LocalProtocolError(
            ErrorCode.INTERNAL_ERROR, f"not JSON-serialisable: {error}"
        ) from None


_scan_json: Callable[[str, int], tuple[object, int]] = (
    json.JSONDecoder().scan_once  # type: ignore[attr-defined]
)


def _parse_json(text: str) -> object:
    """``json.loads`` without its checks and regular expressions for the usual payload, which
    starts with a value and holds nothing after it; anything else goes to ``json.loads``."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


# A head lives as long as its stream (an idle WebSocket: days), and thousands of heads repeat
# the same keys and header names. Equal names are shared through this table instead of each
# head holding its own copies. Not sys.intern: interned strings are immortal on some CPython
# builds, and a peer inventing names could then grow memory without bound; this table stops
# taking new names once full (names seen first, the common ones, stay shared).
MAX_SHARED_NAMES = 4096
MAX_SHARED_NAME_LENGTH = 64
_shared_names: dict[str, str] = {}


def shared_name(name: str) -> str:
    """The table's copy of ``name`` (added while there is room), else ``name`` itself."""
    known = _shared_names.get(name)
    if known is not None:
        return known
    if len(_shared_names) < MAX_SHARED_NAMES and len(name) <= MAX_SHARED_NAME_LENGTH:
        _shared_names[name] = name
    return name


def decode_json_object(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object whose keys are shared with other decoded objects (``shared_name``); a
    head's header pairs are the header table's business (``header_table``)."""
    try:
        value = _parse_json(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what} is not a JSON object")
    # The table's own lookup first: one C call for a name seen before (nearly all of them).
    known = _shared_names.get
    return {known(key) or shared_name(key): item for key, item in value.items()}


def _field(obj: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = obj.get(name)
    if type(value) is not kind:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what}.{name} must be a {kind.__name__}")
    return value


OPTIONAL_HELLO_LIMITS = {"header_table_size": 0}
"""Limits a peer may leave out of its HELLO, and what leaving one out means (a peer from before
the header table keeps none, so nothing is indexed toward it)."""


def encode_hello(limits: Limits, version: int = PROTOCOL_VERSION) -> bytes:
    return HELLO_PREFIX.pack(MAGIC, version) + encode_json(dict(limits.as_json()))


def decode_hello(payload: bytes) -> tuple[int, Limits]:
    if len(payload) < HELLO_PREFIX.size or payload[:3] != MAGIC:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HELLO lacks the protocol magic")
    _, version = HELLO_PREFIX.unpack_from(payload)
    settings = decode_json_object(payload[HELLO_PREFIX.size :], "HELLO")
    values = {
        name: _field(settings, name, int, "HELLO")
        for name in Limits().as_json()
        if name not in OPTIONAL_HELLO_LIMITS or name in settings
    }
    for name, absent in OPTIONAL_HELLO_LIMITS.items():
        values.setdefault(name, absent)
    try:
        limits = Limits(**values)
    except ValueError as error:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"HELLO: {error}") from None
    return version, limits


def encode_register(info: RegisterInfo) -> bytes:
    return encode_json(
        {
            "tunnel_id": info.tunnel_id,
            "connector_id": info.connector_id,
            "conn_index": info.conn_index,
            "version": info.version,
            "features": list(info.features),
        }
    )


def decode_register(payload: bytes) -> RegisterInfo:
    obj = decode_json_object(payload, "REGISTER")
    features = _field(obj, "features", list, "REGISTER")
    if not all(type(feature) is str for feature in features):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "REGISTER.features must be strings")
    conn_index = _field(obj, "conn_index", int, "REGISTER")
    if conn_index < 0:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "REGISTER.conn_index must be >= 0")
    return RegisterInfo(
        tunnel_id=_field(obj, "tunnel_id", str, "REGISTER"),
        connector_id=_field(obj, "connector_id", str, "REGISTER"),
        conn_index=conn_index,
        version=_field(obj, "version", str, "REGISTER"),
        features=tuple(features),
    )


def encode_registered(connection_id: str, edge_id: str) -> bytes:
    return encode_json({"connection_id": connection_id, "edge_id": edge_id})


def decode_registered(payload: bytes) -> tuple[str, str]:
    obj = decode_json_object(payload, "REGISTERED")
    return (
        _field(obj, "connection_id", str, "REGISTERED"),
        _field(obj, "edge_id", str, "REGISTERED"),
    )


def encode_refused(code: str, message: str, permanent: bool) -> bytes:
    return encode_json({"code": code, "message": message, "permanent": permanent})


def decode_refused(payload: bytes) -> tuple[str, str, bool]:
    obj = decode_json_object(payload, "REFUSED")
    return (
        _field(obj, "code", str, "REFUSED"),
        _field(obj, "message", str, "REFUSED"),
        _field(obj, "permanent", bool, "REFUSED"),
    )


def decode_u32(payload: bytes, what: str) -> int:
    if len(payload) != U32.size:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{what} payload must be 4 bytes")
    value: int = U32.unpack(payload)[0]
    return value


def encode_goaway(last_stream_id: int, code: ErrorCode, message: str) -> bytes:
    return GOAWAY_PREFIX.pack(last_stream_id, code) + message.encode("utf-8")


def decode_goaway(payload: bytes) -> tuple[int, ErrorCode, str]:
    if len(payload) < GOAWAY_PREFIX.size:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY payload shorter than 8 bytes")
    last_stream_id, code = GOAWAY_PREFIX.unpack_from(payload)
    message = payload[GOAWAY_PREFIX.size :].decode("utf-8", errors="replace")
    return last_stream_id, ErrorCode.from_wire(code), message
