"""Accept loops: one task per connection, connections taken from the backlog in batches.

``trio.serve_listeners`` accepts one connection per scheduling round (each ``accept`` ends in
a checkpoint), so a burst of new connections (every request of a ``Connection: close``
client, a reconnect storm after a restart) waits in the kernel's backlog for as many rounds
as it has connections. Like nginx's ``multi_accept``, a plain TCP listener here takes what the
backlog holds after each accept that had to wait, up to ``MAX_ACCEPT_BATCH``, without another
round trip through the scheduler. TLS listeners accept one at a time (their handshake is the
connection's own task's job anyway).

Each connection is closed exactly once: ``trio.serve_listeners`` ends every connection with
``aclose_forcefully`` (a cancel scope and a checkpoint) on top of the handler's own close,
which cost about a tenth of the edge's CPU with ``Connection: close``. A plain socket is
closed here without waiting; a TLS stream goes through ``aclose_forcefully``, as it may have a
close_notify to send.

Running out of descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOMEM``, ``ENOBUFS``) is not
fatal: the loop logs it and tries again after ``ACCEPT_RETRY_SECONDS``, by then some
connections have usually closed. Any other accept error ends the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["ACCEPT_CAPACITY_ERRNOS", "MAX_ACCEPT_BATCH", "serve_listener"]

log = logging.getLogger(__name__)

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SECONDS = 0.1
MAX_ACCEPT_BATCH = 64


async def serve_listener(
    listener: trio.abc.Listener[Any],
    handler: Callable[[Any], Awaitable[None]],
    handler_nursery: trio.Nursery | None = None,
) -> None:
    """Accept until cancelled, running ``handler(stream)`` for each connection in its own task
    (in ``handler_nursery`` when given, so a drain can stop accepting and let them finish)."""

    async def guarded(stream: Any) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()
            else:
                await trio.aclose_forcefully(stream)

    backlog = _BacklogReader.of(listener)
    try:
        async with trio.open_nursery() as own_nursery, listener:
            nursery = handler_nursery if handler_nursery is not None else own_nursery
            while True:
                try:
                    stream = await listener.accept()
                except OSError as error:
                    await _accept_failed(error)
                    continue
                nursery.start_soon(guarded, stream)
                if backlog is None:
                    continue
                try:
                    for more in backlog.take(MAX_ACCEPT_BATCH - 1):
                        nursery.start_soon(guarded, more)
                except OSError as error:
                    await _accept_failed(error)
    finally:
        if backlog is not None:
            backlog.close()


async def _accept_failed(error: OSError) -> None:
    if error.errno not in ACCEPT_CAPACITY_ERRNOS:
        raise error
    log.error("accept failed (%s); retrying in %s s",
              os.strerror(error.errno or 0), ACCEPT_RETRY_SECONDS)
    await trio.sleep(ACCEPT_RETRY_SECONDS)


class _BacklogReader:
    """Non-blocking accepts on a duplicate of a plain TCP listener's descriptor.

    The duplicate is closed with the loop (``close``), so a drained edge stops taking
    connections into its backlog just as it would without it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def of(cls, listener: trio.abc.Listener[Any]) -> _BacklogReader | None:
        if not isinstance(listener, trio.SocketListener):
            return None
        listening = listener.socket
        duplicate = socket.socket(
            listening.family, listening.type, listening.proto, fileno=os.dup(listening.fileno())
        )
        duplicate.setblocking(False)  # already so: the flag is shared with trio's socket
        return cls(duplicate)

    def take(self, limit: int) -> list[trio.SocketStream]:
        """Up to ``limit`` connections that are waiting now; raises an accept's OSError."""
        taken: list[trio.SocketStream] = []
        while len(taken) < limit:
            try:
                conn, _address = self._sock.accept()
            except BlockingIOError:
                break
            except OSError:
                if taken:
                    break  # hand over what was accepted; the next accept reports the error
                raise
            taken.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
        return taken

    def close(self) -> None:
        self._sock.close()
