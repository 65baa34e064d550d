"""The visitor's side of the end-to-end tests: HTTP/1.1 (h11) and WebSocket (wsproto) clients
over plain trio sockets to the edge's public listener.

Bodies stream both ways: an upload is sent chunk by chunk as it is generated and a download is
hashed as it arrives, so the test process never holds a 100 MB body either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

RECEIVE_SIZE = 65536


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def open_connection(address: str) -> trio.SocketStream:
    host, port = split_address(address)
    return await trio.open_tcp_stream(host, port)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class HttpConnection:
    """One client connection: send a request (body streamed), read the response."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send_request(self, host: str, target: str, *, method: str = "GET",
                           headers: Sequence[tuple[str, str]] = (),
                           body_length: int | None = None) -> None:
        all_headers = [("host", host), *headers]
        if body_length is not None:
            all_headers.append(("content-length", str(body_length)))
        await self.stream.send_all(self.h11.send(
            h11.Request(method=method, target=target, headers=all_headers)))

    async def send_body(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            await self.stream.send_all(self.h11.send(h11.Data(data=chunk)))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    async def receive_response(self) -> Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return Response(event.status_code, list(event.headers))
            if isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the edge closed before answering")

    async def receive_body(self, response: Response) -> Response:
        body = bytearray()
        while type(event := await self.next_event()) is h11.Data:
            body += event.data
        response.body = bytes(body)
        return response

    async def hash_body(self) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        while type(event := await self.next_event()) is h11.Data:
            digest.update(event.data)
            size += len(event.data)
        return digest.hexdigest(), size


async def fetch(address: str, host: str, target: str = "/", *, method: str = "GET",
                headers: Sequence[tuple[str, str]] = (), body: bytes | None = None) -> Response:
    """One request on a fresh connection, the whole response read."""
    async with await open_connection(address) as stream:
        conn = HttpConnection(stream)
        await conn.send_request(host, target, method=method, headers=headers,
                                body_length=None if body is None else len(body))
        if body is not None:
            await conn.send_body([body] if body else [])
        response = await conn.receive_response()
        return await conn.receive_body(response)


async def fetch_json_error(address: str, host: str, target: str = "/") -> Response:
    """A request that asks for the edge's error pages in JSON."""
    return await fetch(address, host, target, headers=[("accept", "application/json")])


def status_of(raw: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    status_line = raw.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), raw[:200]
    return int(status_line.split()[1])


class WebSocketClient:
    """A wsproto client over one trio socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._pending: list[Any] = []

    async def handshake(self, host: str, target: str,
                        headers: Sequence[tuple[str, str]] = ()) -> int:
        """Upgrade; returns 101 on success or the refusal's status."""
        extra = [(name.encode(), value.encode()) for name, value in headers]
        await self.stream.send_all(
            self.ws.send(Request(host=host, target=target, extra_headers=extra)))
        while True:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    return 101
                if isinstance(event, RejectConnection):
                    return int(event.status_code)
            await self._receive()

    def _events(self) -> list[Any]:
        events, self._pending = [*self._pending, *self.ws.events()], []
        return events

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.ws.receive_data(data or None)

    async def send(self, message: str | bytes) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else \
            BytesMessage(data=message)
        await self.stream.send_all(self.ws.send(event))

    async def receive(self) -> str | bytes:
        """The next whole message."""
        parts: list[Any] = []
        while True:
            events = self._events()
            for index, event in enumerate(events):
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        self._pending = events[index + 1:]
                        if isinstance(event, TextMessage):
                            return "".join(parts)
                        return b"".join(parts)
                elif isinstance(event, CloseConnection):
                    raise trio.BrokenResourceError(f"closed by the peer ({event.code})")
            await self._receive()

    async def close(self) -> int:
        """Close handshake; returns the code the peer answered with."""
        await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
        while True:
            for event in self._events():
                if isinstance(event, CloseConnection):
                    return int(event.code)
            await self._receive()
