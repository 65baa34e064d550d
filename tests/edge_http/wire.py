"""Raw-bytes plumbing for driving one HTTP connection over an in-memory stream pair."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h11
import trio
import trio.testing

from edge.forwarding import IPNetwork
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)

PEER = "203.0.113.9"


@dataclass
class ParsedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Recorder:
    """A handler that answers 200 with a summary and remembers every request it saw."""

    requests: list[IncomingRequest] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def __call__(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        self.requests.append(request)
        data = bytearray()
        while chunk := await body.receive_some():
            data += chunk
        self.bodies.append(bytes(data))
        payload = f"{request.method} {request.target}".encode()
        await respond.start(200, [(b"content-length", str(len(payload)).encode())])
        await respond.send(payload)
        await respond.end()


HandlerFn = Callable[[IncomingRequest, RequestBody, ResponseWriter], Awaitable[None]]


def _serving(
    server: trio.abc.Stream,
    handler: HandlerFn,
    *,
    limits: HttpLimits | None,
    peer: str,
    scheme: str,
    trusted_proxies: Sequence[IPNetwork],
    server_name: str | None,
    encoded_slash_allowed: Callable[[str], bool] | None = None,
) -> Callable[[], Awaitable[None]]:
    """The server side of one test connection, ready for ``start_soon``."""
    return partial(
        serve_http_connection,
        server,
        handler,
        limits=limits or HttpLimits(),
        client_ip=peer,
        scheme=scheme,
        trusted_proxies=trusted_proxies,
        server_name=server_name,
        encoded_slash_allowed=encoded_slash_allowed,
    )


async def run_raw(
    raw: bytes,
    handler: HandlerFn,
    *,
    limits: HttpLimits | None = None,
    trusted_proxies: Sequence[IPNetwork] = (),
    server_name: str | None = None,
    peer: str = PEER,
    scheme: str = "https",
    close_after_send: bool = True,
    encoded_slash_allowed: Callable[[str], bool] | None = None,
) -> bytes:
    """Send ``raw``, half-close, and return every byte the server wrote until it closed."""
    client, server = trio.testing.memory_stream_pair()
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serving(
            server, handler, limits=limits, peer=peer, scheme=scheme,
            trusted_proxies=trusted_proxies, server_name=server_name,
            encoded_slash_allowed=encoded_slash_allowed,
        ))
        try:
            await client.send_all(raw)
            if close_after_send:
                await client.send_eof()
        except trio.BrokenResourceError:
            pass  # the server already closed its end; what it wrote is still readable
        while data := await client.receive_some(65536):
            received += data
        await client.aclose()
    return bytes(received)


def parse_responses(data: bytes, *, head_requests: Sequence[int] = ()) -> list[ParsedResponse]:
    """Split a byte stream into responses (Content-Length, chunked, or read-to-close bodies).

    ``head_requests`` lists the indexes of responses that answer HEAD (no body on the wire).
    """
    responses: list[ParsedResponse] = []
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines[1:])
        ]
        response = ParsedResponse(status, headers, b"", head)
        if len(responses) in head_requests or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif response.header(b"content-length") is not None:
            length = int(response.header(b"content-length") or b"0")
            body, rest = rest[:length], rest[length:]
        elif (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
            body_parts = bytearray()
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _trailer, _, rest = rest.partition(b"\r\n")
                    break
                body_parts += rest[:size]
                rest = rest[size + 2 :]
            body = bytes(body_parts)
        else:
            body, rest = rest, b""
        response.body = body
        responses.append(response)
    return responses


def request(
    target: str = "/",
    *,
    method: str = "GET",
    host: str = "app.example.com",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


CONNECTION_GUARD_SECONDS = 3600


@asynccontextmanager
async def open_connection(
    handler: HandlerFn,
    *,
    limits: HttpLimits | None = None,
    trusted_proxies: Sequence[IPNetwork] = (),
    server_name: str | None = None,
    peer: str = PEER,
    over_socket: bool = False,
) -> AsyncIterator[trio.abc.Stream]:
    """Run one server connection; yield the client end; wait for the server when done.

    In memory by default; ``over_socket`` serves a connected pair of Unix sockets instead, so
    the server reads and writes the descriptor itself as it does a plain TCP client."""
    client: trio.abc.Stream
    server: trio.abc.Stream
    if over_socket:
        left, right = trio.socket.socketpair()
        client, server = trio.SocketStream(left), trio.SocketStream(right)
    else:
        client, server = trio.testing.memory_stream_pair()
    # A connection that never ends fails the test instead of hanging it (on a MockClock the
    # guard is reached at once).
    with trio.fail_after(CONNECTION_GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serving(
                server, handler, limits=limits, peer=peer, scheme="https",
                trusted_proxies=trusted_proxies, server_name=server_name,
            ))
            try:
                yield client
            finally:
                await client.aclose()


class H11Client:
    """A strict client-side parser, so tests check the server against an independent reader."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send_request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        host: str = "app.example.com",
    ) -> None:
        all_headers = [("Host", host), *headers]
        if body is not None and not any(n.lower() == "content-length" for n, _ in headers):
            all_headers.append(("Content-Length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        )
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)) or b"")
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            assert event is not h11.PAUSED
            return event  # type: ignore[return-value]

    async def read_response(self) -> ParsedResponse:
        event = await self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await self.next_event()
        assert isinstance(event, h11.Response), event
        body = bytearray()
        while True:
            part = await self.next_event()
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise AssertionError(part)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return ParsedResponse(event.status_code, list(event.headers.raw_items()), bytes(body))

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> ParsedResponse:
        await self.send_request(method, target, headers, body)
        return await self.read_response()


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def read_until(stream: trio.abc.Stream, needle: bytes) -> bytes:
    """Read until ``needle`` has arrived (the end of a known response body)."""
    data = bytearray()
    while needle not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed before {needle!r}; got {bytes(data)!r}"
        data += chunk
    return bytes(data)
