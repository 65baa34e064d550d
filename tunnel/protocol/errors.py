"""Error codes and exceptions of the tunnel wire protocol.

The protocol layer has its own small hierarchy, kept apart from the driver's
(``tunnel.errors``) because this package must stay free of I/O imports::

    TunnelProtocolError
     ├── ProtocolError        the peer broke the protocol; the connection is dead.
     │                        A GOAWAY carrying ``code`` is already queued so the
     │                        driver can flush it before closing.
     └── LocalProtocolError   this side asked for something the protocol forbids
          │                   (sending past the window, a second head, a stream
          │                   after GOAWAY); the connection stays usable.
          └── StreamClosedError  the stream is finished or was reset.

Both carry an ``ErrorCode`` so callers can map them to HTTP statuses or reset codes
without parsing messages.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(IntEnum):
    """Codes carried by RESET and GOAWAY frames."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    FRAME_TOO_LARGE = 5
    REFUSED_STREAM = 6
    CANCEL = 7
    ORIGIN_UNREACHABLE = 8
    ORIGIN_TIMEOUT = 9
    NO_INGRESS = 10
    ACCESS_DENIED = 11
    HEAD_TOO_LARGE = 12
    TOO_MANY_STREAMS = 13

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """Map a received code; unknown codes (a newer peer) read as INTERNAL_ERROR."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


class RefusalCode(StrEnum):
    """Codes of a REFUSED frame; ``permanent`` says whether reconnecting can help."""

    BAD_CREDENTIALS = "bad_credentials"
    TUNNEL_DELETED = "tunnel_deleted"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"

    @property
    def permanent(self) -> bool:
        return self in _PERMANENT_REFUSALS


_PERMANENT_REFUSALS = frozenset(
    {RefusalCode.BAD_CREDENTIALS, RefusalCode.TUNNEL_DELETED, RefusalCode.UNSUPPORTED_VERSION}
)


class TunnelProtocolError(Exception):
    """Base of every error raised by the sans-IO protocol."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class ProtocolError(TunnelProtocolError):
    """The peer violated the protocol; the connection must be closed."""


class LocalProtocolError(TunnelProtocolError):
    """This side asked for an action the protocol does not allow right now."""


class StreamClosedError(LocalProtocolError):
    """The stream was finished or reset and can no longer carry that frame."""

    def __init__(self, stream_id: int, message: str) -> None:
        super().__init__(ErrorCode.STREAM_CLOSED, message)
        self.stream_id = stream_id
