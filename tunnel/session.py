"""``TunnelSession``: drives one ``TunnelConnection`` over one WebSocket transport.

Three tasks per session, whatever the number of streams:

* the reader turns payload into protocol events as it arrives (a large message is
  parsed piece by piece) and hands them to streams; it never waits on a stream
  (stream buffers are bounded by their windows);
* the writer waits until the protocol has bytes queued, then takes *all* of it and
  sends it as one message, so frames queued meanwhile by many streams share one
  write. It does not wait for more: holding frames back a few scheduling rounds to
  batch them made each side sit idle while the other worked through a whole batch
  (each process at ~60% CPU under wrk -c32); writing at once took keep-alive
  throughput up by about a quarter;
* the heartbeat sends a PING every ``heartbeat_interval`` and declares the link
  dead when nothing at all arrived for ``heartbeat_timeout``. Time comes from
  trio's clock, so tests run it on a ``MockClock``.

Senders wait when the protocol's outgoing buffer holds ``max_outgoing`` bytes or
more, and for per-stream credit. The reader itself pauses only when replies it
generated (PING ACKs, RESETs, credit) pile up to ``READER_PAUSE_FACTOR`` times that
bound, i.e. for a peer that sends but never reads; the heartbeat then ends it. ``go_away()`` (or a GOAWAY from the peer) stops
new streams; the session closes itself once the last open stream is closed.
``run()`` returns when the session is over; ``close_reason`` says why.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import trio

from .errors import (
    ConnectionLost,
    HeartbeatTimeout,
    ProtocolViolation,
    RegistrationRefused,
    SessionClosed,
    SessionDraining,
    StreamLimitReached,
    TransportClosed,
    TransportError,
)
from .protocol import (
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    Head,
    HeadReceived,
    LocalProtocolError,
    ProtocolError,
    Refused,
    Registered,
    RegisterInfo,
    RegisterReceived,
    Role,
    StreamAborted,
    StreamOpened,
    TunnelConnection,
    WindowUpdated,
)
from .stream_workers import StreamWorkers
from .streams import TunnelStream, track_session
from .transport import WebSocketTransport

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTGOING = 1024 * 1024
# Larger batches are cut into several WebSocket messages; the protocol is self-framed.
MAX_MESSAGE_BYTES = 1024 * 1024
# The reader pauses when this many times max_outgoing bytes wait to be written.
READER_PAUSE_FACTOR = 4
_PING_COUNTER = struct.Struct(">Q")

StreamHandler = Callable[[TunnelStream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SessionTiming:
    """Liveness settings, in seconds; close_timeout bounds the final flush."""

    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        if self.close_timeout <= 0:
            raise ValueError("close_timeout must be positive")


DEFAULT_TIMING = SessionTiming()


@dataclass(slots=True)
class SessionCounters:
    """Running totals read by metrics; wire bytes include WebSocket payload only.

    ``messages_sent`` counts WebSocket messages written; ``messages_received`` counts the
    pieces of payload read (a large message may arrive, and be parsed, in several).
    """

    bytes_received: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    streams_total: int = 0


def _batches(parts: list[bytes], limit: int) -> Iterator[list[bytes | memoryview]]:
    """Cut queued frames into messages of at most ``limit`` bytes (frames may straddle)."""
    batch: list[bytes | memoryview] = []
    room = limit
    for part in parts:
        view = memoryview(part)
        while view:
            if not room:
                yield batch
                batch, room = [], limit
            piece = view[:room]
            batch.append(piece)
            room -= len(piece)
            view = view[len(piece) :]
    if batch:
        yield batch


class TunnelSession:
    """One tunnel connection: transport, protocol state, streams and their tasks."""

    def __init__(
        self,
        transport: WebSocketTransport,
        connection: TunnelConnection,
        *,
        handle_stream: StreamHandler | None = None,
        timing: SessionTiming = DEFAULT_TIMING,
        max_outgoing: int = DEFAULT_MAX_OUTGOING,
        label: str = "",
    ) -> None:
        self.transport = transport
        self.connection = connection
        self.timing = timing
        self.max_outgoing = max_outgoing
        self._reader_pause_at = READER_PAUSE_FACTOR * max_outgoing
        self.label = label or f"{connection.role.value} session"
        self.counters = SessionCounters()
        self.close_reason: SessionClosed | None = None
        self._handle_stream = handle_stream
        self._streams: dict[int, TunnelStream] = {}
        self.bulk_streams: set[TunnelStream] = set()
        track_session(self)
        """Open streams that moved ``streams.BULK_BYTES`` or more (kept by the streams)."""
        self._writer_wakeup = trio.Event()
        self._room = trio.lowlevel.ParkingLot()
        self._terminated = trio.Event()
        self._writer_done = trio.Event()
        self._closed = trio.Event()
        self._drained = trio.Event()
        self.draining = False
        """Set after a GOAWAY either way: no new streams here (read on every stream opened)."""
        self._refused = False
        self._registration = trio.Event()
        self._registration_answer: Registered | Refused | None = None
        self._register_received = trio.Event()
        self._register_info: RegisterInfo | None = None
        self._workers: StreamWorkers[TunnelStream] | None = None
        self._running = False
        self._last_inbound = 0.0

    # -- public state ----------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.connection.role

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def outgoing_room(self) -> int:
        """Bytes that may still be queued before senders have to wait."""
        return self.max_outgoing - self.connection.outgoing_size

    async def wait_drained(self) -> None:
        """Return once draining and every stream is closed (or the session ended)."""
        await self._drained.wait()

    async def wait_closed(self) -> None:
        """Return once ``run()`` has finished and the transport is closed."""
        await self._closed.wait()

    # -- registration ----------------------------------------------------------------

    @property
    def refusal(self) -> Refused | None:
        """The edge's REFUSED (connector side), if it refused or revoked this connection."""
        answer = self._registration_answer
        return answer if isinstance(answer, Refused) else None

    async def register(
        self,
        info: RegisterInfo | None = None,
        *,
        tunnel_id: str = "",
        connector_id: str = "",
        conn_index: int = 0,
        version: str = "",
        features: Sequence[str] = (),
    ) -> Registered:
        """Connector: register and wait for the answer (``run()`` must be running).

        Pass a RegisterInfo, or its fields as keywords.
        """
        if info is None:
            info = RegisterInfo(tunnel_id, connector_id, conn_index, version, tuple(features))
        self.connection.register(info)
        self.kick_writer()
        await self._registration.wait()
        answer = self._registration_answer
        if isinstance(answer, Registered):
            return answer
        if isinstance(answer, Refused):
            raise RegistrationRefused(answer.code, answer.message, answer.permanent)
        raise self._closed_error()

    async def accept_registration(self) -> RegisterInfo:
        """Edge: wait for the connector's REGISTER."""
        await self._register_received.wait()
        if self._register_info is None:
            raise self._closed_error()
        return self._register_info

    def registered(self, connection_id: str, edge_id: str) -> None:
        """Edge: accept the registration; streams may be opened from now on."""
        self.connection.registered(connection_id, edge_id)
        self.label = f"connection {connection_id}"
        self.kick_writer()

    async def refuse(self, code: str, message: str, permanent: bool) -> None:
        """Edge: refuse the registration, or revoke it later (e.g. ``tunnel_deleted``).

        The refusal is flushed, every open stream fails, and the session closes.
        """
        self.connection.refuse(code, message, permanent)
        self.draining = True
        self._terminate(SessionClosed(f"registration refused ({code})"))
        await self._finish()

    # -- streams ---------------------------------------------------------------------

    async def open_stream(self, head: Head, end_stream: bool = False) -> TunnelStream:
        """Edge: open a stream with its request head.

        Raises SessionDraining after a GOAWAY, StreamLimitReached when the peer's
        concurrency limit is reached (try another connection), the session's
        SessionClosed once it ended, LocalProtocolError for a head over the limit.

        Cancellation is checked but the task is not rescheduled: the caller's next step,
        waiting for the response head, is the schedule point (a yield here cost every
        request an extra trip through the run queue).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_can_open()
        if self.outgoing_room <= 0:
            await self.wait_for_room()
            self._check_can_open()
        try:
            stream_id = self.connection.open_stream(head, end_stream)
        except LocalProtocolError as error:
            if error.code is ErrorCode.TOO_MANY_STREAMS:
                raise StreamLimitReached(error.message) from None
            if error.code is ErrorCode.REFUSED_STREAM:
                raise SessionDraining(error.message) from None
            raise
        stream = TunnelStream(self, stream_id, head)
        self._streams[stream_id] = stream
        self.counters.streams_total += 1
        self.kick_writer()
        return stream

    def _check_can_open(self) -> None:
        if self.close_reason is not None:
            raise self._closed_error()
        if self.draining:
            raise SessionDraining(f"{self.label} is draining; open the stream elsewhere")

    def go_away(self, code: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> None:
        """Stop new streams; with NO_ERROR in-flight ones finish, otherwise all end now."""
        if self.close_reason is not None:
            return
        self.connection.go_away(code, message)
        self.draining = True
        self.kick_writer()
        if code is not ErrorCode.NO_ERROR:
            self._terminate(SessionClosed(message or f"went away with {code.name}", code=code))
        else:
            self._check_drained()

    async def drain(self) -> None:
        """GOAWAY, let in-flight streams finish, return once the session has closed."""
        self.go_away(ErrorCode.NO_ERROR, "draining")
        await self.wait_closed()

    async def aclose(self) -> None:
        """End the session now: GOAWAY, fail every stream, close the transport."""
        if self.close_reason is None:
            self.connection.go_away(ErrorCode.NO_ERROR, "closing")
            self._terminate(SessionClosed("the session was closed locally"))
        await self._finish()

    async def _finish(self) -> None:
        """Wait for ``run()`` to flush and close, or do both here if it never ran."""
        if self._running:
            await self.wait_closed()
            return
        try:
            data = self.connection.data_to_send()
            if data:
                with trio.move_on_after(self.timing.close_timeout):
                    await self.transport.send_message(data)
        except TransportError:
            pass
        finally:
            await self.transport.aclose()
            self._closed.set()

    # -- used by TunnelStream --------------------------------------------------------

    def kick_writer(self) -> None:
        self._writer_wakeup.set()

    def wake_senders(self) -> None:
        if self._room:
            self._room.unpark_all()

    async def wait_for_room(self) -> bool:
        """Wait while the outgoing buffer is full; True if it had to wait."""
        waited = False
        while self.outgoing_room <= 0 and self.close_reason is None:
            await self._room.park()
            waited = True
        return waited

    def forget_stream(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self._streams:
            self._drained.set()
            self._terminate(SessionClosed(f"{self.label} drained", by_peer=False))

    def _closed_error(self) -> SessionClosed:
        if self.close_reason is not None:
            return self.close_reason.clone()
        return SessionClosed(f"{self.label} is not running")

    # -- the tasks -------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the session until it ends; then every open stream has failed."""
        if self._running:
            raise RuntimeError("TunnelSession.run() is already running")
        self._running = True
        self._last_inbound = trio.current_time()
        self.kick_writer()
        try:
            async with trio.open_nursery() as nursery:
                self._workers = StreamWorkers(nursery, self._serve_stream)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._heartbeat_loop)
                await self._terminated.wait()
                with trio.move_on_after(self.timing.close_timeout):
                    await self._writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._terminate(SessionClosed(f"{self.label} was cancelled"))
            try:
                await self.transport.aclose()
            finally:
                self._closed.set()
                logger.debug("%s closed", self.label)

    def _terminate(self, reason: SessionClosed) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if isinstance(reason, (ProtocolViolation, HeartbeatTimeout)):
            level = logging.WARNING
        elif isinstance(reason, ConnectionLost):
            level = logging.INFO
        else:
            level = logging.DEBUG
        logger.log(level, "%s ending: %s", self.label, reason)
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._on_session_closed(reason)
        self._room.unpark_all()
        self._drained.set()
        self._registration.set()
        self._register_received.set()
        self._terminated.set()
        self.kick_writer()

    async def _write_loop(self) -> None:
        connection = self.connection
        transport = self.transport
        counters = self.counters
        try:
            while True:
                if connection.outgoing_size == 0:
                    if self._terminated.is_set():
                        return
                    await self._writer_wakeup.wait()
                    self._writer_wakeup = trio.Event()
                    continue
                size = connection.outgoing_size
                parts = connection.take_outgoing()
                if size <= MAX_MESSAGE_BYTES:
                    await transport.send_parts(parts)
                else:
                    for batch in _batches(parts, MAX_MESSAGE_BYTES):
                        await transport.send_parts(batch)
                counters.bytes_sent += size
                counters.messages_sent += 1
                self._room.unpark_all()
        except TransportError as error:
            self._terminate(ConnectionLost(f"{self.label}: {error}", by_peer=True))
        finally:
            self._writer_done.set()

    async def _read_loop(self) -> None:
        connection = self.connection
        transport = self.transport
        counters = self.counters
        dispatch = self._dispatch
        while True:
            try:
                message = await transport.receive_data()
            except TransportClosed as error:
                self._transport_ended(error)
                return
            except TransportError as error:
                self._terminate(
                    ProtocolViolation(
                        f"{self.label}: {error}", code=ErrorCode.PROTOCOL_ERROR, by_peer=True
                    )
                )
                return
            self._last_inbound = trio.current_time()
            counters.bytes_received += len(message)
            counters.messages_received += 1
            try:
                events = connection.receive_data(message)
            except ProtocolError as error:
                self._terminate(
                    ProtocolViolation(
                        f"{self.label}: peer broke the protocol: {error}", code=error.code
                    )
                )
                return
            for event in events:
                dispatch(event)
            if connection.outgoing_size:
                self.kick_writer()
                if connection.outgoing_size >= self._reader_pause_at:
                    # Replies (PING ACKs, RESETs, credit) pile up for a peer that does
                    # not read: stop reading it until they drain. If they never do,
                    # the heartbeat ends the session.
                    await self.wait_for_room()

    def _transport_ended(self, error: TransportClosed) -> None:
        if self._refused or (self.draining and not self._streams):
            self._terminate(SessionClosed(f"{self.label}: the peer closed", by_peer=True))
        else:
            self._terminate(ConnectionLost(f"{self.label}: {error}", by_peer=True))

    async def _heartbeat_loop(self) -> None:
        interval = self.timing.heartbeat_interval
        timeout = self.timing.heartbeat_timeout
        counter = 0
        next_ping = trio.current_time() + interval
        while True:
            now = trio.current_time()
            deadline = self._last_inbound + timeout
            if now >= deadline:
                self._terminate(
                    HeartbeatTimeout(f"{self.label}: nothing received for {timeout:g}s")
                )
                return
            if now >= next_ping:
                counter += 1
                try:
                    self.connection.ping(_PING_COUNTER.pack(counter))
                except LocalProtocolError:
                    return
                self.kick_writer()
                next_ping = now + interval
            await trio.sleep_until(min(deadline, next_ping))

    # -- events ----------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        # Ordered by frequency: DATA and credit first.
        if isinstance(event, DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data, event.end_stream)
        elif isinstance(event, WindowUpdated):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_credit()
        elif isinstance(event, StreamOpened):
            self._on_stream_opened(event)
        elif isinstance(event, HeadReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_head(event.head, event.end_stream)
        elif isinstance(event, StreamAborted):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                logger.debug("%s stream %d reset: %s", self.label, event.stream_id, event.code.name)
                stream._on_reset(event.code, event.by_peer)
        elif isinstance(event, RegisterReceived):
            self._register_info = event.info
            self._register_received.set()
        elif isinstance(event, Registered):
            self.label = f"connection {event.connection_id}"
            self._registration_answer = event
            self._registration.set()
        elif isinstance(event, Refused):
            self._refused = True
            self.draining = True
            self._registration_answer = event
            self._registration.set()
            self._terminate(
                SessionClosed(f"{self.label}: refused by the edge ({event.code})", by_peer=True)
            )
        elif isinstance(event, GoAwayReceived):
            self._on_goaway(event)

    def _on_stream_opened(self, event: StreamOpened) -> None:
        stream_id = event.stream_id
        if self._handle_stream is None or self._workers is None or self.draining:
            self.connection.reset_stream(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = TunnelStream(self, stream_id, event.head, remote_ended=event.end_stream)
        self._streams[stream_id] = stream
        self.counters.streams_total += 1
        self._workers.start(stream)

    async def _serve_stream(self, stream: TunnelStream) -> None:
        handler = self._handle_stream
        assert handler is not None  # streams are only accepted with a handler
        try:
            await handler(stream)
        except Exception:
            logger.exception("%s stream %d: handler failed", self.label, stream.stream_id)
            stream.reset(ErrorCode.INTERNAL_ERROR)
            return
        except BaseException:
            if self.close_reason is None:
                stream.reset(ErrorCode.CANCEL)
            # else the stream already failed with the session's reason; keep that visible.
            raise
        if not stream.closed:  # handlers usually close their stream themselves
            await stream.aclose()

    def _on_goaway(self, event: GoAwayReceived) -> None:
        self.draining = True
        if event.code is not ErrorCode.NO_ERROR:
            self._terminate(
                ProtocolViolation(
                    f"{self.label}: peer went away with {event.code.name}: {event.message}",
                    code=event.code,
                    by_peer=True,
                )
            )
            return
        logger.info("%s: peer is draining (%s)", self.label, event.message or "no reason")
        if not self._streams:
            self._drained.set()
            self._terminate(SessionClosed(f"{self.label}: the peer went away", by_peer=True))
