"""WebSocket transport for the tunnel: binary messages over any ``trio.abc.Stream``.

The tunnel protocol frames itself, so this layer only moves byte strings. A message larger
than ``max_message_size`` closes the connection (1009) as soon as a frame header announces
it, before its payload is buffered. The upgrade that precedes it lives in
``tunnel.websocket_handshake``.

wsproto serves the upgrade only. After it, frames are encoded and parsed here:
every response body crosses the tunnel from the connector, which as the WebSocket
client must mask what it sends, and a general-purpose frame layer spends more on
copies than on the masking itself. Masking uses a fresh random key per frame and
websockets' C ``apply_mask`` (``bytes.translate`` over the four byte lanes without it), so
it runs at close to memory-copy speed (``tunnel.protocol.websocket``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import trio

from .errors import (
    MessageTooLarge,
    TransportClosed,
    TransportError,
)
from .fd_io import receive_from_fd, write_without_waiting
from .protocol.websocket import (
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    FIN,
    MASKED,
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    U16,
    U64,
    apply_mask,
    frame_header,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MessageTooLarge",
    "RandomBytes",
    "TransportClosed",
    "TransportError",
    "WebSocketTransport",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
RECEIVE_SIZE = 256 * 1024
VECTORED_MIN_BYTES = 64 * 1024
"""Messages from this size on are written as several buffers (``_encode_vectored``)."""
MAX_IOVEC = 512
CLOSE_SEND_TIMEOUT = 1.0

RandomBytes = Callable[[int], bytes]


class WebSocketTransport:
    """Binary WebSocket messages over a trio stream, after the upgrade.

    One task may send while another receives. Pongs and close replies produced while
    receiving are written by the receiver only when no send is in progress, otherwise
    by the sender right after its message, so the reader never waits on the writer.

    ``receive_data()`` returns message payload as it arrives, possibly part of a
    message (the tunnel protocol frames itself); ``receive_message()`` returns whole
    messages. Use one or the other on a transport.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client: bool,
        received: bytes = b"",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self._client = client
        self._random_bytes = random_bytes
        self.max_message_size = max_message_size
        self._send_lock = trio.Lock()
        self._pending_control = bytearray()
        self._buffer = bytearray(received)
        # The data frame being received: payload bytes still to come, its key and flags.
        self._remaining = 0
        self._key: bytes | None = None
        self._key_offset = 0
        self._final = True
        self._in_message = False
        self._message_size = 0
        self._message_end = False
        self._end: TransportError | None = None
        self._close_sent = False
        self._closed = False
        self._write_failed = False

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    # -- sending -----------------------------------------------------------------------

    def _encode(
        self, opcode: int, parts: Sequence[bytes | bytearray | memoryview]
    ) -> bytes | bytearray:
        length = sum(map(len, parts))
        if not self._client:
            return b"".join([frame_header(opcode, length, None), *parts])
        key = self._random_bytes(4)
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        return frame_header(opcode, length, key) + apply_mask(payload, key)

    async def send_message(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_parts((data,))

    async def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the concatenation of ``parts`` as one binary message."""
        if self._closed or self._close_sent:
            raise TransportClosed("the transport is closed locally")
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case: the session's writer is the only sender
        except trio.WouldBlock:
            await lock.acquire()
        try:
            size = sum(map(len, parts))
            if self._fd is None or size < VECTORED_MIN_BYTES or len(parts) > MAX_IOVEC:
                await self._write(self._encode(OP_BINARY, parts))
            else:
                await self._write_vectored(self._encode_vectored(OP_BINARY, parts, size))
            await self._flush_control_locked()
        finally:
            lock.release()

    def _encode_vectored(
        self, opcode: int, parts: Sequence[bytes | bytearray | memoryview], length: int
    ) -> list[bytes | bytearray | memoryview]:
        """The frame as buffers for one ``writev``: a large message is not joined, and when
        masked each part is masked on its own (the key turned to the part's offset), so the
        payload is copied once (by the mask) or not at all, instead of three times."""
        if not self._client:
            return [frame_header(opcode, length, None), *parts]
        key = self._random_bytes(4)
        buffers: list[bytes | bytearray | memoryview] = [frame_header(opcode, length, key)]
        offset = 0
        for part in parts:
            turn = offset % 4
            buffers.append(apply_mask(part, key[turn:] + key[:turn] if turn else key))
            offset += len(part)
        return buffers

    async def _write_vectored(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """Write ``buffers`` on the plain socket (``send_parts`` checked there is one)."""
        assert self._fd is not None
        if self._write_failed:
            raise TransportClosed("an earlier send was interrupted; the framing is lost")
        try:
            sent = os.writev(self._fd, buffers)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self._write_failed = True
            raise TransportClosed(f"the connection broke while sending: {error}") from None
        # The socket took part of it: the rest goes out buffer by buffer, without joining.
        for buffer in buffers:
            size = len(buffer)
            if sent >= size:
                sent -= size
                continue
            await self._write(memoryview(buffer)[sent:] if sent else buffer)
            sent = 0

    async def _write(self, payload: bytes | bytearray | memoryview) -> None:
        if self._write_failed:
            raise TransportClosed("an earlier send was interrupted; the framing is lost")
        sent = 0
        if self._fd is not None:
            # First without trio's machinery: the socket buffer usually takes it all at once.
            try:
                sent = write_without_waiting(self._fd, payload)
            except OSError as error:
                self._write_failed = True
                raise TransportClosed(f"the connection broke while sending: {error}") from None
            if sent == len(payload):
                return
        try:
            await self._stream.send_all(memoryview(payload)[sent:] if sent else payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._write_failed = True
            raise TransportClosed(f"the connection broke while sending: {error}") from None
        except BaseException:
            # Cancelled part-way: the peer may hold half a frame, so nothing more may follow.
            self._write_failed = True
            raise

    async def _flush_control_locked(self) -> None:
        while self._pending_control:
            control = bytes(self._pending_control)
            self._pending_control.clear()
            await self._write(control)

    async def _flush_control(self) -> None:
        if self._pending_control and not self._send_lock.locked():
            async with self._send_lock:
                await self._flush_control_locked()

    def _queue_control(self, opcode: int, payload: bytes) -> None:
        self._pending_control += self._encode(opcode, (payload,))

    def _queue_close(self, code: int, reason: str = "") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        self._queue_control(OP_CLOSE, U16.pack(code) + reason.encode("utf-8")[:120])

    # -- receiving ---------------------------------------------------------------------

    async def receive_data(self) -> bytes | bytearray:
        """Payload bytes of the next binary message(s); raises TransportClosed at the end."""
        while True:
            chunk = self._parse()
            if chunk is not None:
                return chunk
            if self._pending_control:
                try:
                    await self._flush_control()
                except TransportClosed:
                    pass
            if self._end is not None:
                raise self._end
            try:
                data: bytes | bytearray
                if self._fd is not None:
                    data = await receive_from_fd(self._fd, RECEIVE_SIZE)
                else:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                self._end = TransportClosed(f"the connection broke while receiving: {error}")
                continue
            if not data:
                self._end = TransportClosed("the connection ended without a close frame")
                continue
            if not self._buffer and self._remaining:
                # The common case in bulk transfers: the read starts with payload of the
                # current frame; that part is handed on as read, only the rest is buffered.
                if len(data) <= self._remaining:
                    return self._payload(data if self._key is not None else bytes(data))
                head = memoryview(data)[: self._remaining]
                self._buffer += memoryview(data)[self._remaining :]
                return self._payload(bytes(head))
            self._buffer += data

    async def receive_message(self) -> bytes:
        """The next complete binary message; raises TransportClosed at the end."""
        parts: list[bytes | bytearray] = []
        while True:
            parts.append(await self.receive_data())
            if self._message_end:
                return b"".join(parts)

    def _payload(self, data: bytes | bytearray) -> bytes | bytearray:
        """Account for (and unmask) the next ``len(data)`` payload bytes of the frame."""
        size = len(data)
        self._remaining -= size
        key = self._key
        if key is not None:
            offset = self._key_offset
            data = apply_mask(data, key[offset:] + key[:offset] if offset else key)
            self._key_offset = (offset + size) % 4
        self._message_end = self._final and not self._remaining
        return data

    def _parse(self) -> bytes | bytearray | None:
        """Payload bytes available now, or None when more input is needed (or it ended)."""
        buffer = self._buffer
        self._message_end = False
        while self._end is None:
            if self._remaining:
                size = min(self._remaining, len(buffer))
                if not size:
                    return None
                if size == len(buffer):
                    # All of the buffer is payload: hand the buffer itself on, no copy.
                    self._buffer = bytearray()
                    return self._payload(buffer)
                chunk = buffer[:size]
                del buffer[:size]
                return self._payload(chunk)
            parsed = self._parse_header(buffer)
            if parsed is None:
                return None
            if parsed:  # a data frame: an empty final one ends its message here
                self._message_end = self._final and not self._remaining
                if self._message_end:
                    return b""
        return None

    def _parse_header(self, buffer: bytearray) -> bool | None:
        """Consume one frame header (a data frame: True) or whole control frame (False).

        None when the frame is incomplete or broke the protocol (then ``_end`` is set).
        """
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        opcode = first & 0x0F
        length = second & 0x7F
        offset = 2
        if length == 126:
            offset = 4
        elif length == 127:
            offset = 10
        masked = bool(second & MASKED)
        header_size = offset + (4 if masked else 0)
        if len(buffer) < header_size:
            return None
        if length == 126:
            length = U16.unpack_from(buffer, 2)[0]
        elif length == 127:
            length = U64.unpack_from(buffer, 2)[0]
        if first & 0x70:
            self._violation("reserved bits set without a negotiated extension")
            return None
        if masked == self._client:
            self._violation("frame masking does not match the peer's role")
            return None
        final = bool(first & FIN)
        if opcode >= OP_CLOSE:
            if length > MAX_CONTROL_PAYLOAD or not final:
                self._violation("control frame is fragmented or too long")
                return None
            if len(buffer) < header_size + length:
                return None
            payload = bytes(buffer[header_size : header_size + length])
            if masked:
                payload = apply_mask(payload, bytes(buffer[offset:header_size]))
            del buffer[: header_size + length]
            self._on_control(opcode, bytes(payload))
            return False
        if opcode == OP_TEXT:
            self._fail_locally(
                CLOSE_UNSUPPORTED_DATA, TransportError("text message on a binary tunnel")
            )
            return None
        if opcode == OP_CONTINUATION:
            if not self._in_message:
                self._violation("continuation frame without a message")
                return None
        elif opcode == OP_BINARY:
            if self._in_message:
                self._violation("new message inside a fragmented one")
                return None
            self._message_size = 0
        else:
            self._violation(f"unknown opcode {opcode:#x}")
            return None
        self._message_size += length
        if self._message_size > self.max_message_size:
            self._fail_locally(
                CLOSE_TOO_BIG, MessageTooLarge(f"a message exceeded {self.max_message_size} bytes")
            )
            return None
        self._key = bytes(buffer[offset:header_size]) if masked else None
        self._key_offset = 0
        self._remaining = length
        self._final = final
        self._in_message = not final
        del buffer[:header_size]
        return True

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if not self._close_sent:
                self._queue_control(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            if len(payload) == 1:
                self._violation("close frame with a one-byte payload")
                return
            code = U16.unpack_from(payload)[0] if payload else CLOSE_NO_STATUS
            reason = payload[2:].decode("utf-8", errors="replace")
            self._queue_close(code if payload else CLOSE_NORMAL)
            self._end = TransportClosed(
                f"the peer closed the WebSocket ({code} {reason})".strip(), code=code
            )
        elif opcode != OP_PONG:
            self._violation(f"unknown control opcode {opcode:#x}")

    def _violation(self, reason: str) -> None:
        self._fail_locally(CLOSE_PROTOCOL_ERROR, TransportError(f"WebSocket: {reason}"))

    def _fail_locally(self, code: int, error: TransportError) -> None:
        logger.debug("closing the WebSocket with %d: %s", code, error)
        self._queue_close(code)
        self._end = error

    async def aclose(self) -> None:
        """Send a close frame when that cannot block for long, then close the stream."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            graceful = not self._send_lock.locked() and not self._write_failed
            if graceful:
                self._queue_close(CLOSE_NORMAL)
                with trio.move_on_after(CLOSE_SEND_TIMEOUT):
                    await self._flush_control()
        except TransportClosed:
            pass
        finally:
            self._fd = None  # the descriptor may be reused once the socket is closed
            await self._stream.aclose()
