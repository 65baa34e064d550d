"""The private origin behind the tunnel in the end-to-end tests (trio + h11, wsproto for /ws).

It stands for the service owner's application, so it knows nothing of tunnelgate. It runs in
the test's own trio run (`Origin.serve_connection`) or as a process of its own (`python
origin.py --listen 127.0.0.1:0 --tag TAG`, one JSON ready line on stdout), which is how the
namespace test puts it on a loopback the edge cannot reach. It imports only h11, trio and
wsproto for that reason.

Bodies are generated and hashed chunk by chunk, never held whole, so a 100 MB transfer costs
the origin one chunk of memory and the memory bound measured on the edge and connector is
theirs alone.

    GET  /hello        JSON: the request as the origin saw it, plus the origin's tag
    GET  /item/N       the body "item N" (concurrent requests each get their own answer)
    POST /sha256       streams the body through SHA-256; JSON {"sha256", "bytes"}
    GET  /download/N   N bytes of `pattern_chunks`, with a content-length
    GET  /silent       reads the request and never answers (origin timeout)
    GET  /ws           WebSocket echo (text and binary)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import h11
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WebSocketConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

CHUNK = 65536
_BLOCK = random.Random(20240611).randbytes(1 << 20) + random.Random(7).randbytes(CHUNK)
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


def pattern_chunks(total: int, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Deterministic, non-repeating-looking bytes, one chunk at a time.

    Each chunk starts with its own index, so a lost, duplicated or reordered chunk changes
    the SHA-256 of the whole.
    """
    index = 0
    sent = 0
    while sent < total:
        size = min(chunk_size, total - sent)
        offset = (index * 4099) % (1 << 20)
        chunk = (index.to_bytes(8, "big") + _BLOCK[offset : offset + chunk_size])[:size]
        yield chunk
        sent += size
        index += 1


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(total):
        digest.update(chunk)
    return digest.hexdigest()


def websocket_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())


class Origin:
    """One origin; `tag` lets a test prove that an answer came from this very process."""

    def __init__(self, tag: str = "origin") -> None:
        self.tag = tag
        self.requests = 0
        self.downloads_finished = 0

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
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
            conn.receive_data(bytes(await stream.receive_some(CHUNK)))

    async def _serve(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        while True:
            request = await self._next(stream, conn)
            if type(request) is not h11.Request:
                return
            self.requests += 1
            path = request.target.decode("latin-1")
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in request.headers}
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(stream, conn, headers)
                return
            digest = hashlib.sha256()
            size = 0
            while type(event := await self._next(stream, conn)) is h11.Data:
                digest.update(event.data)
                size += len(event.data)
            if path == "/silent":
                await trio.sleep_forever()
            elif path == "/sha256":
                answer = {"sha256": digest.hexdigest(), "bytes": size}
                await self._respond(stream, conn, json.dumps(answer).encode())
            elif path.startswith("/item/"):
                await self._respond(stream, conn, f"item {path[6:]}".encode())
            elif path.startswith("/download/"):
                total = int(path[10:])
                await stream.send_all(conn.send(h11.Response(
                    status_code=200,
                    headers=[("content-length", str(total)),
                             ("content-type", "application/octet-stream")],
                )))
                for chunk in pattern_chunks(total):
                    await stream.send_all(conn.send(h11.Data(data=chunk)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                self.downloads_finished += 1
            else:
                seen = {"tag": self.tag, "method": request.method.decode(), "target": path,
                        "headers": headers}
                await self._respond(stream, conn, json.dumps(seen).encode(),
                                    content_type="application/json")
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _respond(self, stream: trio.abc.Stream, conn: h11.Connection, body: bytes, *,
                       content_type: str = "text/plain") -> None:
        data = conn.send(h11.Response(status_code=200, headers=[
            ("content-length", str(len(body))), ("content-type", content_type),
            ("x-origin-tag", self.tag),
        ]))
        data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _websocket(self, stream: trio.abc.Stream, conn: h11.Connection,
                         headers: dict[str, str]) -> None:
        key = headers.get("sec-websocket-key", "").encode("latin-1")
        await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("upgrade", "websocket"), ("connection", "Upgrade"),
            ("sec-websocket-accept", websocket_accept(key).decode()),
        ])))
        trailing, _closed = conn.trailing_data
        ws = WebSocketConnection(ConnectionType.SERVER, trailing_data=bytes(trailing))
        while True:
            for event in ws.events():
                # Echo fragment by fragment, so a large message is never held whole.
                if isinstance(event, TextMessage):
                    await stream.send_all(ws.send(TextMessage(
                        data=event.data, message_finished=event.message_finished)))
                elif isinstance(event, BytesMessage):
                    await stream.send_all(ws.send(BytesMessage(
                        data=event.data, message_finished=event.message_finished)))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
            data = await stream.receive_some(CHUNK)
            if not data:
                return
            ws.receive_data(bytes(data))


async def serve(origin: Origin, host: str, port: int,
                *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on HOST:PORT; `started` hands back the bound "HOST:PORT"."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, origin.serve_connection, listeners))
        task_status.started(f"{bound_host}:{bound_port}")


def main() -> None:
    parser = argparse.ArgumentParser(description="the end-to-end tests' private origin")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--tag", default="origin")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve, Origin(args.tag), host, int(port))
            sys.stdout.write(json.dumps({"event": "ready", "listen": address}) + "\n")
            sys.stdout.flush()

    trio.run(run)


if __name__ == "__main__":
    main()
