"""Events returned by ``TunnelConnection.receive_data``.

Each is an immutable record of one thing the peer did. Heads are plain JSON
objects (``dict[str, Any]``); their conventions belong to the protocol's users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode
from .limits import Limits

Head = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegisterInfo:
    """What a connector says about itself when it registers a connection."""

    tunnel_id: str
    connector_id: str
    conn_index: int
    version: str
    features: tuple[str, ...] = field(default=())


class Event:
    """Base class of protocol events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """The peer's protocol version and the limits it holds this side to."""

    version: int
    settings: Limits


@dataclass(frozen=True, slots=True)
class RegisterReceived(Event):
    info: RegisterInfo


@dataclass(frozen=True, slots=True)
class Registered(Event):
    connection_id: str
    edge_id: str


@dataclass(frozen=True, slots=True)
class Refused(Event):
    code: str
    message: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The edge opened a stream (seen by the connector) with its request head."""

    stream_id: int
    head: Head
    end_stream: bool


@dataclass(frozen=True, slots=True)
class HeadReceived(Event):
    """The response head of a stream this side opened."""

    stream_id: int
    head: Head
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Body bytes; ``end_stream`` marks the peer's last frame (data may then be empty)."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """The peer returned send credit for a stream."""

    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class StreamAborted(Event):
    """A stream ended abnormally: reset by the peer (``by_peer``) or by this protocol."""

    stream_id: int
    code: ErrorCode
    by_peer: bool


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """A PING arrived; its ACK is already queued."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PingAcked(Event):
    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer is draining (NO_ERROR) or failing; no new streams after ``last_stream_id``."""

    last_stream_id: int
    code: ErrorCode
    message: str
