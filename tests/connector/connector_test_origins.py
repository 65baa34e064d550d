"""Small real origins on 127.0.0.1 port 0 (or a unix socket) for the dispatcher tests.

- :class:`H11Origin` speaks HTTP/1.1 with h11 and counts accepted connections, so keep-alive
  reuse is measured where it happens: at the origin.
- :func:`websocket_echo` is a wsproto echo server.
- :func:`shout_after_eof` reads until the peer half-closes, then answers: it only works if
  half-close travels through the relay.
"""

from __future__ import annotations

import hashlib
import json
import socket
from functools import partial
from typing import Any

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError)


class H11Origin:
    """Routes: /hello, /close, /bye (answers, then drops the idle connection), /silent,
    /sha256 (hashes the streamed body), /reject (413 without reading), /big (1 MiB)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        self.accepted += 1
        async with stream:
            try:
                await self._serve(stream, h11.Connection(h11.SERVER))
            except IO_ERRORS:
                pass

    async def _next(self, stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(65536))

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, status: int,
                       body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        all_headers = [("content-length", str(len(body))), *(headers or [])]
        data = conn.send(h11.Response(status_code=status, headers=all_headers))
        if body and self.requests[-1][0] != "HEAD":
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _serve(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        while True:
            event = await self._next(stream, conn)
            if type(event) is not h11.Request:
                return
            path = event.target.decode()
            headers = {n.decode(): v.decode() for n, v in event.headers}
            self.requests.append((event.method.decode(), path, headers))
            if path == "/silent":
                await trio.sleep_forever()
            if path == "/reject":
                await self._respond(stream, conn, 413, b"too big", [("connection", "close")])
                # Lingering close: drain what the client still sends, so our close does not
                # reset the connection under the answer.
                assert isinstance(stream, trio.SocketStream)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
                return
            digest = hashlib.sha256()
            size = 0
            while type(body_event := await self._next(stream, conn)) is h11.Data:
                digest.update(body_event.data)
                size += len(body_event.data)
            if path == "/sha256":
                answer = json.dumps({"sha256": digest.hexdigest(), "size": size}).encode()
                await self._respond(stream, conn, 200, answer)
            elif path == "/close":
                await self._respond(stream, conn, 200, b"bye", [("connection", "close")])
                return
            elif path == "/big":
                await self._respond(stream, conn, 200, b"x" * (1 << 20))
            else:
                seen = json.dumps({"host": headers.get("host"), "method": event.method.decode(),
                                   "xff": headers.get("x-forwarded-for"),
                                   "proto": headers.get("x-forwarded-proto")}).encode()
                await self._respond(stream, conn, 200, seen, [("X-Origin", "h11")])
                if path == "/bye":
                    return
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


async def websocket_echo(stream: trio.abc.Stream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    async with stream:
        try:
            while True:
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, Request):
                        await stream.send_all(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage | BytesMessage):
                        await stream.send_all(ws.send(type(event)(data=event.data)))
                    elif isinstance(event, Ping):
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        await stream.send_all(ws.send(event.response()))
                        return
                if not data:
                    return
        except IO_ERRORS:
            pass


async def shout_after_eof(stream: trio.abc.Stream) -> None:
    async with stream:
        received = bytearray()
        while data := await stream.receive_some(65536):
            received.extend(data)
        await stream.send_all(b"got:" + bytes(received).upper())


async def never_speaks(stream: trio.abc.Stream) -> None:
    async with stream:
        await trio.sleep_forever()


async def serve_tcp(nursery: trio.Nursery, handler: Any) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), handler, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def serve_unix(nursery: trio.Nursery, handler: Any, path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    await nursery.start(trio.serve_listeners, handler, [trio.SocketListener(sock)])


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
