"""Sans-IO tunnel wire protocol: bytes in, events out; calls in, bytes out.

Nothing here performs I/O, imports trio, sockets or logging, or reads a clock; the
driver in ``tunnel.session`` owns all of that.
"""

from .connection import Role, TunnelConnection
from .errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RefusalCode,
    StreamClosedError,
    TunnelProtocolError,
)
from .events import (
    DataReceived,
    Event,
    GoAwayReceived,
    Head,
    HeadReceived,
    HelloReceived,
    PingAcked,
    PingReceived,
    Refused,
    Registered,
    RegisterInfo,
    RegisterReceived,
    StreamAborted,
    StreamOpened,
    WindowUpdated,
)
from .frames import PROTOCOL_VERSION, Frame, FrameReader, FrameType
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "DataReceived",
    "ErrorCode",
    "Event",
    "Frame",
    "FrameReader",
    "FrameType",
    "GoAwayReceived",
    "Head",
    "HeadReceived",
    "HelloReceived",
    "Limits",
    "LocalProtocolError",
    "PingAcked",
    "PingReceived",
    "ProtocolError",
    "RefusalCode",
    "Refused",
    "RegisterInfo",
    "RegisterReceived",
    "Registered",
    "Role",
    "StreamAborted",
    "StreamClosedError",
    "StreamOpened",
    "TunnelConnection",
    "TunnelProtocolError",
    "WindowUpdated",
]
