"""Reads and writes on a plain TCP socket's descriptor without trio's stream layers.

``trio.SocketStream`` wraps every read and write in a conflict detector, an error translator
and a try-then-wait helper; on the request path each layer costs more than the system call.
The objects that use this (the edge's client connection, the connector's origin connection,
the tunnel transport) are the only reader of their socket and serialise their own writes, so
none of that protection is needed. Waiting for readability stays the scheduling point; reads
whose bytes were already there yield every few reads, so a peer that keeps the buffer full
cannot starve the other tasks. A write is tried once without waiting; the caller sends what
is left through its stream, under its own timeout.

Closing is the caller's too: ``close_unwaited`` closes a socket its own task has finished with,
without trio's ``notify_closing``.

Errors are the ones ``os.read``, ``os.write`` and ``trio.lowlevel.wait_readable`` raise:
``OSError`` when the connection broke, ``trio.ClosedResourceError`` when another task closed
the socket.
"""

from __future__ import annotations

import os

import trio

READS_BETWEEN_YIELDS = 16
"""Reads that found their bytes already there, process-wide, between two forced yields."""

_reads_until_yield = READS_BETWEEN_YIELDS


async def receive_from_fd(fd: int, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from non-blocking descriptor ``fd``; ``b""`` at end of stream.

    Always a cancellation point. A read that had to wait yielded while waiting; one whose
    bytes were already there yields only every ``READS_BETWEEN_YIELDS`` such reads (counted
    across all descriptors), which bounds how long any task can run on ready data without
    letting the others in, and spares the usual read its scheduling round.
    """
    global _reads_until_yield
    try:
        data = os.read(fd, max_bytes)
    except BlockingIOError:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                continue
    _reads_until_yield -= 1
    if _reads_until_yield <= 0:
        _reads_until_yield = READS_BETWEEN_YIELDS
        await trio.lowlevel.checkpoint()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()
    return data


def write_without_waiting(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write what the socket buffer takes of ``data`` now; the number of bytes written."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


def close_unwaited(sock: trio.socket.SocketType) -> None:
    """Close a socket that no task waits on any more, without ``notify_closing``.

    ``notify_closing`` is there to wake the tasks blocked on a descriptor; with none left, all
    it does is an ``epoll_ctl(DEL)``, and the kernel drops a closed descriptor from the epoll
    set by itself (a connection's descriptor is never duplicated here). That was about 4% of the
    edge's instructions per ``Connection: close`` request. A task still waiting on the descriptor would
    never wake, so only the task that did the socket's last read closes it this way. The trio
    socket is left detached: closing it again does nothing.
    """
    fd = sock.detach()
    if fd >= 0:
        os.close(fd)
