"""``TunnelStream``: one multiplexed stream of a tunnel session as a trio stream.

Reads come from a per-stream buffer filled by the session's reader task; the
buffer can never exceed this side's window, because the protocol refuses DATA
beyond the credit it granted. Credit is returned (``consumed``) only as the
application takes bytes, so a stream nobody reads stops its sender without
stalling the shared reader or any other stream.

Closing: ``send_eof()`` ends this direction. ``aclose()`` ends this direction too
(so data already sent is delivered, then EOF), and if the peer's direction is not
finished it resets the stream with CANCEL so the peer stops sending. To abandon a
half-written message use ``reset(code)`` (or leave an ``async with`` block with an
exception), so the peer sees an error rather than a clean, truncated EOF.

A tunnel may hold tens of thousands of idle streams (WebSockets), so a stream keeps only what
it uses: no attribute dict, a receive buffer only while received bytes wait to be taken, and
one slot per direction for the task waiting there (a stream has at most one receiving and one
sending task) instead of a ``ParkingLot``, which costs several times as much once a task waits.
The response head is received like data: it is the first thing that arrives.

A stream that has moved ``BULK_BYTES`` either way is a bulk transfer: it joins its session's
``bulk_streams`` until it closes, so that the edge opens new streams on another connection of
the tunnel where it can (``edge.tunnels``). A bulk stream keeps up to a whole grown window
(1 MiB) in the connection's pipe, and a small request opened behind it waits for all of it.

A bulk stream also yields the CPU of its process: trio gives every ready task one step per
scheduling round, and a bulk step (up to 256 KiB copied in and out, a system call each) costs as
much as several small requests. So while a stream that is not bulk is open on any session of
the process, a bulk stream sits out ``BULK_YIELD_ROUNDS`` rounds after each piece it takes or
sends, and the small requests beside a download keep most of their pace (bench/README.md, the
head-of-line row). A transfer running alone yields nothing extra.
"""

from __future__ import annotations

import operator
import weakref
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from .errors import SessionClosed, StreamReset
from .protocol import ErrorCode, Head, LocalProtocolError

if TYPE_CHECKING:
    from .session import TunnelSession

DEFAULT_RECEIVE_SIZE = 256 * 1024
# Smallest DATA write worth making when the session's outgoing buffer is nearly full.
MIN_WRITE = 16 * 1024
# Bytes a stream moves (taken plus sent) before it counts as a bulk transfer: one initial window.
BULK_BYTES = 256 * 1024
# Received pieces at least this large are handed on alone: joining small ones saves writes,
# joining a bulk transfer's frames only copies them.
UNJOINED_PIECE = 16 * 1024
# Rounds a bulk stream sits out after each piece while other streams are open in the process:
# a 256 KiB piece costs about what three or four small requests cost at the edge.
BULK_YIELD_ROUNDS = 3

# Every session of this process, for small_streams_open(); a session adds itself.
_sessions: weakref.WeakSet[TunnelSession] = weakref.WeakSet()


def track_session(session: TunnelSession) -> None:
    _sessions.add(session)


def small_streams_open() -> bool:
    """True while a stream that is not a bulk transfer is open on any session of the process."""
    return any(session.open_streams > len(session.bulk_streams) for session in _sessions)


class _Waiter:
    """The one task parked on a direction of a stream, until ``wake()`` or a cancellation."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class TunnelStream(trio.abc.HalfCloseableStream):
    """A bidirectional byte stream inside a tunnel session.

    ``head`` is the request head (on the edge: the one it sent). On the edge,
    ``receive_head()`` waits for the response head; on the connector,
    ``send_head()`` sends it. Peer resets raise ``StreamReset(code)`` and a lost
    session raises its ``SessionClosed``; both are ``trio.BrokenResourceError``.
    """

    __slots__ = (
        "_closed",
        "_conn",
        "_inbound",
        "_inbound_offset",
        "_inbound_size",
        "_local_ended",
        "_moved",
        "_receiver",
        "_receiving",
        "_remote_ended",
        "_reset",
        "_sender",
        "_sending",
        "_session",
        "_session_error",
        "head",
        "response_head",
        "stream_id",
    )

    def __init__(
        self, session: TunnelSession, stream_id: int, head: Head, *, remote_ended: bool = False
    ) -> None:
        self._session = session
        self._conn = session.connection
        self.stream_id = stream_id
        self.head = head
        self.response_head: Head | None = None
        self._inbound: deque[bytes] | None = None
        self._inbound_offset = 0
        self._inbound_size = 0
        self._remote_ended = remote_ended
        self._local_ended = False
        self._closed = False
        self._reset: StreamReset | None = None
        self._session_error: SessionClosed | None = None
        self._receiver = _Waiter()
        self._sender = _Waiter()
        self._sending = False
        self._receiving = False
        self._moved = 0

    def __repr__(self) -> str:
        return f"<TunnelStream {self.stream_id} of {self._session.label}>"

    @property
    def session(self) -> TunnelSession:
        return self._session

    @property
    def buffered(self) -> int:
        """Received bytes not yet taken by the application."""
        return self._inbound_size

    @property
    def finished(self) -> bool:
        """Both directions ended, or the stream was reset, closed or lost."""
        return self._closed or not self._conn.stream_is_open(self.stream_id)

    # -- events from the session -----------------------------------------------------

    def _on_data(self, data: bytes, end_stream: bool) -> None:
        if self._closed:
            return
        if data:
            if self._inbound is None:
                self._inbound = deque()
            self._inbound.append(data)
            self._inbound_size += len(data)
        if end_stream:
            self._remote_ended = True
        self._receiver.wake()

    def _on_credit(self) -> None:
        self._sender.wake()

    def _on_head(self, head: Head, end_stream: bool) -> None:
        self.response_head = head
        if end_stream:
            self._on_data(b"", True)
        else:
            self._receiver.wake()

    def _on_reset(self, code: ErrorCode, by_peer: bool) -> None:
        self._reset = StreamReset(code, by_peer=by_peer)
        self._wake_all()

    def _on_session_closed(self, reason: SessionClosed) -> None:
        self._session_error = reason
        self._wake_all()

    def _wake_all(self) -> None:
        self._receiver.wake()
        self._sender.wake()
        self._session.wake_senders()

    # -- failure checks --------------------------------------------------------------

    def _broken(self) -> trio.BrokenResourceError | None:
        if self._reset is not None:
            return StreamReset(self._reset.code, by_peer=self._reset.by_peer)
        if self._session_error is not None:
            return self._session_error.clone()
        return None

    def _check_send(self) -> None:
        if self._closed or self._local_ended:
            raise trio.ClosedResourceError("this side of the stream is closed")
        broken = self._broken()
        if broken is not None:
            raise broken

    def _claim_send(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True

    def _claim_receive(self) -> None:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True

    # -- receiving -------------------------------------------------------------------

    async def receive_head(self) -> Head:
        """The response head (edge side); raises StreamReset if the stream was reset first.

        Receiving the head counts as receiving: one task at a time, as for ``receive_some``.
        """
        self._claim_receive()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while self.response_head is None:
                if self._closed:
                    raise trio.ClosedResourceError("the stream is closed")
                broken = self._broken()
                if broken is not None:
                    raise broken
                await self._receiver.wait()
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return self.response_head
        finally:
            self._receiving = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        else:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        self._claim_receive()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the stream is closed")
                if self._inbound:
                    data = self._take(max_bytes)
                    await self._step_done()
                    return data
                if self._remote_ended:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                broken = self._broken()
                if broken is not None:
                    raise broken
                await self._receiver.wait()
        finally:
            self._receiving = False

    @property
    def closed(self) -> bool:
        """This side closed the stream (``aclose`` or ``reset``)."""
        return self._closed

    @property
    def remote_finished(self) -> bool:
        """The peer ended its side and everything it sent has been taken."""
        return self._remote_ended and not self._inbound and self._broken() is None

    def take_buffered(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        """Up to ``max_bytes`` already received, without waiting (``b""`` when none)."""
        if self._closed or not self._inbound:
            return b""
        return self._take(max_bytes)

    def _take(self, max_bytes: int) -> bytes:
        inbound = self._inbound
        assert inbound is not None
        parts: list[bytes] = []
        need = max_bytes
        while inbound and need:
            chunk = inbound[0]
            start = self._inbound_offset
            available = len(chunk) - start
            if available >= UNJOINED_PIECE and parts:
                break  # a large piece goes on by itself next time, not copied into a join
            if available <= need:
                parts.append(chunk[start:] if start else chunk)
                inbound.popleft()
                self._inbound_offset = 0
                need -= available
                if available >= UNJOINED_PIECE:
                    break
            else:
                parts.append(chunk[start : start + need])
                self._inbound_offset = start + need
                need = 0
        if not inbound:
            self._inbound = None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        size = len(data)
        self._inbound_size -= size
        if self._moved < BULK_BYTES:
            self._count_moved(size)
        if not self._remote_ended:  # credit only matters while the peer may still send
            conn = self._conn
            conn.consumed(self.stream_id, size)
            if conn.outgoing_size:
                self._session.kick_writer()
        return data

    # -- sending ---------------------------------------------------------------------

    async def _wait_to_send(self) -> bool:
        """Check cancellation and the stream, wait for room in the session; True if it waited."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_send()
        session = self._session
        if session.outgoing_room > 0:  # the usual case: no coroutine for a wait that is not one
            return False
        waited = await session.wait_for_room()
        self._check_send()
        return waited

    async def send_head(self, head: Head, end_stream: bool = False) -> None:
        """Send the response head (connector side)."""
        self._claim_send()
        try:
            waited = await self._wait_to_send()
            self._conn.send_head(self.stream_id, head, end_stream)
            if end_stream:
                self._local_ended = True
            self._session.kick_writer()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send_response(self, head: Head, body: bytes) -> bool:
        """Send a whole response at once: head, body and end (connector side).

        All three frames are queued before the writer runs, so a small response crosses the
        tunnel in one message and the edge answers it in one write; sent one by one, each
        part cost the edge a wake-up of its own. Returns False, having sent nothing, when
        the body is larger than the stream's send credit: then send the parts one by one.

        A cancellation point, but it yields only when it had to wait: it ends the stream's
        sending, and the caller closes the stream and waits for its next one right after.
        """
        self._claim_send()
        try:
            await self._wait_to_send()
            conn = self._conn
            if len(body) > conn.send_credit(self.stream_id):
                return False
            if body:
                conn.send_head(self.stream_id, head)
                conn.send_data(self.stream_id, body, end_stream=True)
            else:
                conn.send_head(self.stream_id, head, end_stream=True)
            self._local_ended = True
            self._session.kick_writer()
            return True
        finally:
            self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_send()
            waited = False
            with memoryview(data) as view:
                if view.ndim != 1 or view.itemsize != 1:
                    view = view.cast("B")
                total = len(view)
                offset = 0
                session = self._session
                conn = self._conn
                stream_id = self.stream_id
                while offset < total:
                    self._check_send()
                    credit = conn.send_credit(stream_id)
                    if credit == 0:
                        await self._sender.wait()
                        waited = True
                        continue
                    room = session.outgoing_room
                    if room <= 0:
                        await session.wait_for_room()
                        waited = True
                        continue
                    size = min(credit, total - offset, max(room, MIN_WRITE))
                    if size == total and type(data) is bytes:
                        # Immutable and whole: the protocol keeps it as it is, with no copy.
                        conn.send_data(stream_id, data)
                    else:
                        conn.send_data(stream_id, view[offset : offset + size])
                    offset += size
                    session.kick_writer()
                    if self._moved < BULK_BYTES:
                        self._count_moved(size)
            await self._step_done(waited)
        finally:
            self._sending = False

    async def _step_done(self, waited: bool = False) -> None:
        """The checkpoint after a piece taken or sent (none when the call already waited), and
        for a bulk stream, while other streams are open in the process, the rounds it sits out
        (see the module docstring). Shielded: the piece has moved, so a cancellation here
        would lose it."""
        if self._moved >= BULK_BYTES and small_streams_open():
            for _ in range(BULK_YIELD_ROUNDS):
                await trio.lowlevel.cancel_shielded_checkpoint()
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the stream is closed")
                if self._local_ended or self._broken() is not None:
                    break
                if self._conn.send_credit(self.stream_id) == 0:
                    await self._sender.wait()
                elif self._session.outgoing_room <= 0:
                    await self._session.wait_for_room()
                else:
                    break
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if not self._local_ended:
                broken = self._broken()
                if broken is not None:
                    raise broken
                self._conn.send_end(self.stream_id)
                self._local_ended = True
                self._session.kick_writer()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    # -- closing ---------------------------------------------------------------------

    def reset(self, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort both directions with ``code`` and close the stream; no-op once closed."""
        if self._closed:
            return
        self._conn.reset_stream(self.stream_id, code)
        self._close_locally()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """``aclose`` without its checkpoint, for a caller that is about to yield anyway."""
        if not self._closed:
            self._finish_gracefully()
            self._close_locally()

    def _finish_gracefully(self) -> None:
        conn = self._conn
        stream_id = self.stream_id
        if not conn.stream_is_open(stream_id) or self._session_error is not None:
            return
        if not self._local_ended and not self._sending:
            try:
                conn.send_end(stream_id)
                self._local_ended = True
            except LocalProtocolError:
                pass  # no head sent yet: only a reset can end it
        if conn.stream_is_open(stream_id):
            conn.reset_stream(stream_id, ErrorCode.CANCEL)

    def _count_moved(self, size: int) -> None:
        self._moved += size
        if self._moved >= BULK_BYTES and not self._closed:
            self._session.bulk_streams.add(self)

    def _close_locally(self) -> None:
        self._closed = True
        self._inbound = None
        self._inbound_size = 0
        session = self._session
        if self._moved >= BULK_BYTES:
            session.bulk_streams.discard(self)
        if self._conn.outgoing_size:  # an END or RESET just queued (a wake for nothing costs
            session.kick_writer()  # the writer a scheduling round)
        session.forget_stream(self.stream_id)
        self._receiver.wake()
        self._sender.wake()
        if self._sending:  # a send of this stream may be waiting for room in the session
            session.wake_senders()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.reset(ErrorCode.CANCEL)
        await self.aclose()
