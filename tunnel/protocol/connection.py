"""The sans-IO tunnel connection state machine.

``TunnelConnection`` turns received bytes into events and method calls into bytes
to send; the driver moves the bytes. Rules it enforces:

* HELLO is the first frame each way; REGISTER goes connector -> edge, REGISTERED or
  REFUSED edge -> connector, and streams exist only after REGISTERED. REFUSED may
  also follow REGISTERED, to revoke a live connection (tunnel deleted); after it the
  edge opens nothing and closes.
* Only the edge opens streams, with odd, increasing ids. A frame for an id that was
  never opened is a PROTOCOL_ERROR; a frame for a stream that already finished or
  was reset is dropped, since it may have crossed our RESET on the wire.
* Each direction of a stream ends independently with END_STREAM; the stream is
  forgotten once both directions ended or either side reset it.
* Credit: at most the peer's ``initial_window`` bytes of DATA may be in flight per
  stream at first. Overrunning our window is a FLOW_CONTROL_ERROR connection error.
  Credit goes back in WINDOW_UPDATEs once a quarter of the stream's window has been
  consumed; each time a whole window has been consumed with no other stream opened, the
  update also doubles the window, up to our ``max_window``, and another stream opening
  brings it back (``tunnel.protocol.stream_state``, ``tunnel.protocol.limits``).
* A head larger than ``max_header_block`` is a connection error (HEAD_TOO_LARGE):
  the sender is bound by the advertised limit, so such a head means a broken peer,
  and refusing from the frame header keeps the payload out of memory.
* A new stream beyond ``max_concurrent_streams`` is reset with TOO_MANY_STREAMS;
  after this side sent GOAWAY, new streams are reset with REFUSED_STREAM.
* A head's header pairs may be indexed (``tunnel.protocol.header_table``): every HEAD is
  decoded, including those of streams that are refused or already gone, so both sides' tables
  see the same insertions in the same order.
"""

from __future__ import annotations

from enum import Enum

from .errors import ErrorCode, LocalProtocolError, ProtocolError, StreamClosedError
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
from .frames import (
    FLAG_ACK,
    FLAG_END_STREAM,
    HEADER,
    HEADER_SIZE,
    MAX_U32,
    PING_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
    U32,
    Frame,
    FrameReader,
    FrameType,
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
from .header_table import IncomingHeaderTable, OutgoingHeaderTable
from .limits import DEFAULT_LIMITS, MAX_WINDOW, Limits
from .stream_state import StreamState

_DATA = FrameType.DATA
_WINDOW_UPDATE = FrameType.WINDOW_UPDATE


class Role(Enum):
    EDGE = "edge"
    CONNECTOR = "connector"


class TunnelConnection:
    """One side of a tunnel connection; HELLO is queued on construction."""

    def __init__(self, role: Role, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.role = role
        self.limits = limits
        self.peer_limits: Limits | None = None
        self.peer_version: int | None = None
        self._reader = FrameReader(limits.max_frame_size, limits.max_header_block)
        self._out: list[bytes] = []
        self._out_size = 0
        self._streams: dict[int, StreamState] = {}
        self._highest_stream_id = 0
        self._max_window = max(limits.max_window, limits.initial_window)
        self._register_sent = False
        self._register_received = False
        self._registration_done = False
        self._refused = False
        self._local_goaway = False
        self._remote_goaway = False
        self._error: ProtocolError | None = None
        self._headers_in = IncomingHeaderTable(limits.header_table_size)
        self._headers_out = OutgoingHeaderTable(0)  # sized by the peer's HELLO
        self._queue(FrameType.HELLO, 0, 0, encode_hello(limits))

    # -- state -----------------------------------------------------------------------

    @property
    def outgoing_size(self) -> int:
        return self._out_size

    @property
    def is_registered(self) -> bool:
        """True once REGISTERED has gone out (edge) or come in (connector)."""
        return self._registration_done

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def local_goaway(self) -> bool:
        return self._local_goaway

    @property
    def remote_goaway(self) -> bool:
        return self._remote_goaway

    @property
    def failed(self) -> ProtocolError | None:
        return self._error

    def stream_is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_credit(self, stream_id: int) -> int:
        """Bytes of DATA that may be sent on the stream now (0 when it cannot send)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            return 0
        return stream.send_window

    def data_to_send(self) -> bytes:
        """Everything queued, as one chunk: the driver writes it in one message."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_size = 0
        return data

    def take_outgoing(self) -> list[bytes]:
        """Everything queued, as the list of its pieces (saves the copy of ``data_to_send``)."""
        out = self._out
        self._out = []
        self._out_size = 0
        return out

    # -- sending ---------------------------------------------------------------------

    def _queue(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        self._out.append(HEADER.pack(len(payload), frame_type, flags, stream_id))
        if payload:
            self._out.append(payload)
        self._out_size += HEADER_SIZE + len(payload)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(self._error.code, "the connection has failed")

    def _peer(self) -> Limits:
        if self.peer_limits is None:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "the peer's HELLO has not arrived")
        return self.peer_limits

    def register(self, info: RegisterInfo) -> None:
        self._check_usable()
        if self.role is not Role.CONNECTOR or self._register_sent:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "only a connector registers, once")
        self._register_sent = True
        self._queue(FrameType.REGISTER, 0, 0, encode_register(info))

    def _check_edge_after_register(self) -> None:
        self._check_usable()
        if self.role is not Role.EDGE or not self._register_received or self._refused:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, "only the edge answers a REGISTER, and not after REFUSED"
            )

    def registered(self, connection_id: str, edge_id: str) -> None:
        self._check_edge_after_register()
        if self._registration_done:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "REGISTERED was already sent")
        self._registration_done = True
        self._queue(FrameType.REGISTERED, 0, 0, encode_registered(connection_id, edge_id))

    def refuse(self, code: str, message: str, permanent: bool) -> None:
        """Refuse the registration, or revoke it later (tunnel deleted); the edge then closes."""
        self._check_edge_after_register()
        self._refused = True
        self._local_goaway = True
        self._queue(FrameType.REFUSED, 0, 0, encode_refused(code, message, permanent))

    def _encode_head(self, head: Head) -> bytes:
        peer = self._peer()
        return self._headers_out.encode_head(head, min(peer.max_header_block, peer.max_frame_size))

    def open_stream(self, head: Head, end_stream: bool = False) -> int:
        """Open a stream with its request head (edge only); returns the new stream id."""
        self._check_usable()
        if self.role is not Role.EDGE:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "only the edge opens streams")
        if not self._registration_done:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "the connection is not registered")
        if self._local_goaway or self._remote_goaway:
            raise LocalProtocolError(ErrorCode.REFUSED_STREAM, "the connection is going away")
        peer = self._peer()
        if len(self._streams) >= peer.max_concurrent_streams:
            raise LocalProtocolError(
                ErrorCode.TOO_MANY_STREAMS,
                f"the peer allows {peer.max_concurrent_streams} concurrent streams",
            )
        payload = self._encode_head(head)
        stream_id = self._highest_stream_id + 2 if self._highest_stream_id else 1
        if stream_id > MAX_U32:
            raise LocalProtocolError(ErrorCode.REFUSED_STREAM, "stream ids are exhausted")
        self._highest_stream_id = stream_id
        stream = StreamState(peer.initial_window, self.limits.initial_window, stream_id)
        stream.head_sent = True
        stream.local_ended = end_stream
        self._streams[stream_id] = stream
        self._queue(FrameType.HEAD, FLAG_END_STREAM if end_stream else 0, stream_id, payload)
        return stream_id

    def _sending_stream(self, stream_id: int) -> StreamState:
        self._check_usable()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id, f"stream {stream_id} is not open")
        if stream.local_ended:
            raise StreamClosedError(stream_id, f"stream {stream_id} already ended its side")
        return stream

    def _ended_locally(self, stream_id: int, stream: StreamState) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            del self._streams[stream_id]

    def send_head(self, stream_id: int, head: Head, end_stream: bool = False) -> None:
        """Send the response head of a stream the edge opened (connector only)."""
        stream = self._sending_stream(stream_id)
        if self.role is not Role.CONNECTOR or stream.head_sent:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} already has its head"
            )
        payload = self._encode_head(head)
        stream.head_sent = True
        self._queue(FrameType.HEAD, FLAG_END_STREAM if end_stream else 0, stream_id, payload)
        if end_stream:
            self._ended_locally(stream_id, stream)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> None:
        """Queue DATA, split at the peer's max_frame_size; never beyond ``send_credit``."""
        stream = self._sending_stream(stream_id)
        if not stream.head_sent:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"stream {stream_id}: send the head before data"
            )
        size = len(data)
        if size > stream.send_window:
            raise LocalProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"stream {stream_id}: {size} bytes exceed the send credit {stream.send_window}",
            )
        stream.send_window -= size
        max_frame = self._peer().max_frame_size
        out = self._out
        pack = HEADER.pack
        if size <= max_frame:
            out.append(pack(size, _DATA, FLAG_END_STREAM if end_stream else 0, stream_id))
            if size:
                out.append(bytes(data))
        else:
            with memoryview(data) as view:
                for offset in range(0, size, max_frame):
                    chunk = bytes(view[offset : offset + max_frame])
                    last = offset + max_frame >= size
                    flags = FLAG_END_STREAM if (end_stream and last) else 0
                    out.append(pack(len(chunk), _DATA, flags, stream_id))
                    out.append(chunk)
        frames = max(1, -(-size // max_frame))
        self._out_size += size + HEADER_SIZE * frames
        if end_stream:
            self._ended_locally(stream_id, stream)

    def send_end(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` bytes of the stream; return credit in batches
        (``StreamState.credit_for``)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended or n <= 0:
            return
        credit = stream.credit_for(
            n, self._highest_stream_id, self.limits.initial_window, self._max_window
        )
        if credit:
            self._queue(_WINDOW_UPDATE, 0, stream_id, U32.pack(credit))

    def reset_stream(self, stream_id: int, code: ErrorCode) -> None:
        """Abort a stream in both directions; a no-op when it already finished."""
        if self._error is not None or self._streams.pop(stream_id, None) is None:
            return
        self._queue(FrameType.RESET, 0, stream_id, U32.pack(code))

    def ping(self, payload: bytes) -> None:
        self._check_usable()
        if len(payload) != PING_PAYLOAD_SIZE:
            raise LocalProtocolError(ErrorCode.PROTOCOL_ERROR, "a PING carries exactly 8 bytes")
        self._queue(FrameType.PING, 0, 0, bytes(payload))

    def go_away(self, code: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> None:
        """Announce that no new streams will be accepted; in-flight ones may finish."""
        if self._error is not None:
            return
        self._local_goaway = True
        last = self._highest_stream_id if self.role is Role.CONNECTOR else 0
        self._queue(FrameType.GOAWAY, 0, 0, encode_goaway(last, code, message))

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse received bytes into events.

        Raises ProtocolError on a connection-fatal error, after queueing a GOAWAY with
        its code; every later call raises it again.
        """
        if self._error is not None:
            raise self._error
        events: list[Event] = []
        try:
            for frame in self._reader.feed(data):
                self._handle(frame, events)
        except ProtocolError as error:
            self._fail(error)
            raise
        return events

    def _fail(self, error: ProtocolError) -> None:
        last = self._highest_stream_id if self.role is Role.CONNECTOR else 0
        self._queue(FrameType.GOAWAY, 0, 0, encode_goaway(last, error.code, error.message))
        self._error = error
        self._streams.clear()

    def _handle(self, frame: Frame, events: list[Event]) -> None:
        frame_type = frame.type
        if frame_type is _DATA:
            self._handle_data(frame, events)
            return
        if self.peer_limits is None and frame_type is not FrameType.HELLO:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the first frame must be HELLO")
        if frame_type in _CONNECTION_HANDLERS:
            if frame.stream_id != 0:
                raise ProtocolError(
                    ErrorCode.PROTOCOL_ERROR, f"{frame_type.name} must be on stream 0"
                )
            _CONNECTION_HANDLERS[frame_type](self, frame, events)
        elif frame_type is _WINDOW_UPDATE:
            self._handle_window_update(frame, events)
        elif frame_type is FrameType.HEAD:
            self._handle_head(frame, events)
        else:  # RESET
            self._handle_reset(frame, events)

    def _known_stream(self, stream_id: int, what: str) -> StreamState | None:
        """The live stream for ``stream_id``; None if it already finished."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id == 0 or stream_id % 2 == 0 or stream_id > self._highest_stream_id:
            raise ProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"{what} for stream {stream_id}, which was never opened"
            )
        return None

    def _handle_data(self, frame: Frame, events: list[Event]) -> None:
        if self.peer_limits is None:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the first frame must be HELLO")
        stream_id = frame.stream_id
        stream = self._known_stream(stream_id, "DATA")
        if stream is None:
            return
        if stream.remote_ended:
            raise ProtocolError(
                ErrorCode.STREAM_CLOSED, f"DATA on stream {stream_id} after its END_STREAM"
            )
        if not stream.head_received:
            raise ProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"DATA on stream {stream_id} before its head"
            )
        size = len(frame.payload)
        if size > stream.recv_window:
            raise ProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR,
                f"stream {stream_id}: {size} bytes of DATA exceed the window {stream.recv_window}",
            )
        stream.recv_window -= size
        end_stream = bool(frame.flags & FLAG_END_STREAM)
        if end_stream:
            self._ended_remotely(stream_id, stream)
        events.append(DataReceived(stream_id, frame.payload, end_stream))

    def _ended_remotely(self, stream_id: int, stream: StreamState) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            del self._streams[stream_id]

    def _handle_head(self, frame: Frame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        end_stream = bool(frame.flags & FLAG_END_STREAM)
        if self.role is Role.CONNECTOR and stream_id not in self._streams:
            self._handle_new_stream(frame, end_stream, events)
            return
        stream = self._known_stream(stream_id, "HEAD")
        if stream is not None and stream.head_received:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"second HEAD on stream {stream_id}")
        head = self._headers_in.decode_head(frame.payload)  # even when dropped: it may index
        if stream is None:
            return
        stream.head_received = True
        if end_stream:
            self._ended_remotely(stream_id, stream)
        events.append(HeadReceived(stream_id, head, end_stream))

    def _handle_new_stream(self, frame: Frame, end_stream: bool, events: list[Event]) -> None:
        stream_id = frame.stream_id
        if not self._registration_done:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a stream opened before REGISTERED")
        if stream_id % 2 == 0 or stream_id <= self._highest_stream_id:
            raise ProtocolError(
                ErrorCode.PROTOCOL_ERROR, f"stream id {stream_id} is not odd and increasing"
            )
        self._highest_stream_id = stream_id
        head = self._headers_in.decode_head(frame.payload)  # even when refused: it may index
        refusal = None
        if self._local_goaway:
            refusal = ErrorCode.REFUSED_STREAM
        elif len(self._streams) >= self.limits.max_concurrent_streams:
            refusal = ErrorCode.TOO_MANY_STREAMS
        if refusal is not None:
            self._queue(FrameType.RESET, 0, stream_id, U32.pack(refusal))
            return
        assert self.peer_limits is not None
        stream = StreamState(self.peer_limits.initial_window, self.limits.initial_window, stream_id)
        stream.head_received = True
        stream.remote_ended = end_stream
        self._streams[stream_id] = stream
        events.append(StreamOpened(stream_id, head, end_stream))

    def _handle_window_update(self, frame: Frame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        increment = decode_u32(frame.payload, "WINDOW_UPDATE")
        stream = self._known_stream(stream_id, "WINDOW_UPDATE")
        if increment == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if stream is None:
            return
        if stream.send_window + increment > MAX_WINDOW:
            raise ProtocolError(
                ErrorCode.FLOW_CONTROL_ERROR, f"stream {stream_id}: window grew past 2^31-1"
            )
        stream.send_window += increment
        events.append(WindowUpdated(stream_id, increment))

    def _handle_reset(self, frame: Frame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        code = ErrorCode.from_wire(decode_u32(frame.payload, "RESET"))
        if self._known_stream(stream_id, "RESET") is None:
            return
        del self._streams[stream_id]
        events.append(StreamAborted(stream_id, code, by_peer=True))

    def _handle_hello(self, frame: Frame, events: list[Event]) -> None:
        if self.peer_limits is not None:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "second HELLO")
        version, settings = decode_hello(frame.payload)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"unsupported protocol version {version}")
        self.peer_limits = settings
        self.peer_version = version
        self._headers_out = OutgoingHeaderTable(settings.header_table_size)
        events.append(HelloReceived(version, settings))

    def _handle_register(self, frame: Frame, events: list[Event]) -> None:
        if self.role is not Role.EDGE or self._register_received:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "unexpected REGISTER")
        info = decode_register(frame.payload)
        self._register_received = True
        events.append(RegisterReceived(info))

    def _check_registration_answer(self, what: str) -> None:
        if self.role is not Role.CONNECTOR or not self._register_sent or self._refused:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"unexpected {what}")

    def _handle_registered(self, frame: Frame, events: list[Event]) -> None:
        self._check_registration_answer("REGISTERED")
        if self._registration_done:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "second REGISTERED")
        connection_id, edge_id = decode_registered(frame.payload)
        self._registration_done = True
        events.append(Registered(connection_id, edge_id))

    def _handle_refused(self, frame: Frame, events: list[Event]) -> None:
        self._check_registration_answer("REFUSED")
        code, message, permanent = decode_refused(frame.payload)
        self._refused = True
        self._remote_goaway = True
        events.append(Refused(code, message, permanent))

    def _handle_ping(self, frame: Frame, events: list[Event]) -> None:
        payload = frame.payload
        if len(payload) != PING_PAYLOAD_SIZE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING payload must be 8 bytes")
        if frame.flags & FLAG_ACK:
            events.append(PingAcked(payload))
        else:
            self._queue(FrameType.PING, FLAG_ACK, 0, payload)
            events.append(PingReceived(payload))

    def _handle_goaway(self, frame: Frame, events: list[Event]) -> None:
        last_stream_id, code, message = decode_goaway(frame.payload)
        self._remote_goaway = True
        if self.role is Role.EDGE:
            # Streams past last_stream_id were never processed: retrying them is safe.
            for stream_id in [sid for sid in self._streams if sid > last_stream_id]:
                del self._streams[stream_id]
                events.append(StreamAborted(stream_id, ErrorCode.REFUSED_STREAM, by_peer=True))
        events.append(GoAwayReceived(last_stream_id, code, message))


_CONNECTION_HANDLERS = {
    FrameType.HELLO: TunnelConnection._handle_hello,
    FrameType.REGISTER: TunnelConnection._handle_register,
    FrameType.REGISTERED: TunnelConnection._handle_registered,
    FrameType.REFUSED: TunnelConnection._handle_refused,
    FrameType.PING: TunnelConnection._handle_ping,
    FrameType.GOAWAY: TunnelConnection._handle_goaway,
}
