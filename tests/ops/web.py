"""The origin behind the tunnel and the visitor in front of the edge, for the ops tests.

Both are plain trio + h11 on loopback so a test controls every byte: the visitor can send an
upload one chunk at a time (waiting on the test between chunks) and the origin reports, through
a trio event, the moment the first chunk of a body reached it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

RECEIVE = 65536


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Origin:
    """GET anything -> 200 JSON of what it saw; POST -> 200 JSON with the body's length."""

    tag: str = "origin"
    requests: int = 0
    seen_headers: list[list[tuple[str, str]]] = field(default_factory=list)
    body_started: trio.Event = field(default_factory=trio.Event)

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await _next(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                self.requests += 1
                headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
                self.seen_headers.append(headers)
                received = 0
                while True:
                    event = await _next(conn, stream)
                    if isinstance(event, h11.Data):
                        received += len(event.data)
                        self.body_started.set()
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                body = json.dumps({"tag": self.tag, "method": request.method.decode(),
                                   "target": request.target.decode(), "bytes": received}).encode()
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                    ("set-cookie", "origin_session=origin-cookie-value-7731; Path=/"),
                ])) or b"")
                await stream.send_all((conn.send(h11.Data(data=body)) or b"")
                                      + (conn.send(h11.EndOfMessage()) or b""))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE)
        conn.receive_data(data)


async def serve_origin(origin: Origin, *,
                       task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on 127.0.0.1 with an OS-chosen port; started() hands back "http://HOST:PORT"."""

    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await origin.serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, guarded, listeners)
        task_status.started(f"http://{host}:{port}")


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(address: str, host: str, target: str = "/", *, method: str = "GET",
                  headers: Iterable[tuple[str, str]] = (),
                  body: bytes | AsyncIterator[bytes] = b"",
                  content_length: int | None = None) -> Response:
    """One HTTP/1.1 exchange on its own connection; an async-iterator body is streamed."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("host", host), ("connection", "close"), *headers]
    if isinstance(body, bytes):
        if body or method in ("POST", "PUT"):
            all_headers.append(("content-length", str(len(body))))
    elif content_length is not None:
        all_headers.append(("content-length", str(content_length)))
    else:
        all_headers.append(("transfer-encoding", "chunked"))
    stream = await trio.open_tcp_stream(*split_address(address))
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=target,
                                                    headers=all_headers)) or b"")
        if isinstance(body, bytes):
            if body:
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
        else:
            async for chunk in body:
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        response = await _next(conn, stream)
        assert isinstance(response, h11.Response), response
        data = bytearray()
        while True:
            event = await _next(conn, stream)
            if isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
    return Response(response.status_code,
                    [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers],
                    bytes(data))
