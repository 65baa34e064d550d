"""Reads from a plain TCP socket's descriptor without trio's stream layers.

``trio.SocketStream.receive_some`` wraps every read in a conflict detector, an error
translator and a try-then-wait helper; on the request path each layer costs more than the
read itself. The objects that use this (the edge's client connection, the connector's origin
connection) are the only reader of their socket, so none of that protection is needed.
Waiting for readability stays the scheduling point; bytes that were already there still
yield once, so a peer that keeps the buffer full cannot starve the other tasks.

Errors are the ones ``os.read`` and ``trio.lowlevel.wait_readable`` raise: ``OSError`` when
the connection broke, ``trio.ClosedResourceError`` when another task closed the socket.
"""

from __future__ import annotations

import os

import trio


async def receive_from_fd(fd: int, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from non-blocking descriptor ``fd``; ``b""`` at end of stream."""
    waited = False
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            waited = True
            continue
        if not waited:
            await trio.lowlevel.checkpoint()
        return data
