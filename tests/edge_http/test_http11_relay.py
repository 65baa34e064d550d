"""After a 101: the relay a handler hands back, and the upgraded stream it reads from."""

from __future__ import annotations

import gc
import socket
import weakref
from functools import partial

import pytest
import trio
import trio.testing

from edge.http11 import (
    Handler,
    HttpLimits,
    IncomingRequest,
    Relay,
    RequestBody,
    ResponseWriter,
    UpgradedStream,
    serve_http_connection,
)

from .wire import PEER, parse_responses, read_to_eof, read_until

WS_REQUEST = (
    b"GET /socket HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def _serve(server: trio.abc.Stream, handler: Handler) -> None:
    await serve_http_connection(
        server, handler, limits=HttpLimits(), client_ip=PEER, scheme="https", trusted_proxies=()
    )


async def test_a_returned_relay_runs_after_the_handler_let_go_of_the_request() -> None:
    exchange: list[weakref.ref[object]] = []
    alive_in_relay: list[list[str]] = []

    async def relay(client: trio.abc.Stream) -> None:
        gc.collect()
        alive_in_relay.append([type(ref()).__name__ for ref in exchange if ref() is not None])
        data = await client.receive_some(100)
        await client.send_all(b"echo:" + data)

    async def handler(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> Relay | None:
        exchange.extend(weakref.ref(obj) for obj in (request, body, respond))
        client = await respond.upgrade(101, [(b"Upgrade", b"websocket")])
        return partial(relay, client)

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, handler)
        await client.send_all(WS_REQUEST)
        head = await read_until(client, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        await client.send_all(b"ping")
        assert await read_to_eof(client) == b"echo:ping"
    assert len(exchange) == 3
    assert alive_in_relay == [[]]


async def test_a_relay_without_an_upgrade_is_not_run() -> None:
    ran: list[str] = []

    async def relay() -> None:
        ran.append("relay")

    async def handler(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> Relay | None:
        return relay

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, handler)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        data = await read_to_eof(client)
    assert [r.status for r in parse_responses(data)] == [502]
    assert ran == []


async def test_a_failing_relay_is_logged_and_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def relay() -> None:
        raise RuntimeError("relay broke")

    async def handler(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> Relay | None:
        await respond.upgrade(101, [])
        return relay

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, server, handler)
        await client.send_all(WS_REQUEST)
        data = await read_to_eof(client)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(b"\r\n\r\n")
    assert [r.getMessage().split(" request=")[0] for r in caplog.records
            if r.name == "edge.http11"] == ["relay failed"]


def _socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_the_upgraded_socket_yields_buffered_bytes_then_whole_and_partial_reads() -> None:
    stream, peer = _socket_pair()
    with peer:
        upgraded = UpgradedStream(stream, b"early")
        peer.sendall(b"0123456789")
        assert await upgraded.receive_some(100) == b"early"
        assert await upgraded.receive_some(4) == b"0123"  # a full read: the next one reads on
        assert await upgraded.receive_some(4) == b"4567"
        assert await upgraded.receive_some(100) == b"89"
        peer.sendall(b"late")
        assert await upgraded.receive_some(100) == b"late"
        await upgraded.send_all(b"back")
        assert peer.recv(100) == b"back"
        peer.shutdown(socket.SHUT_WR)
        assert await upgraded.receive_some(100) == b""
        await upgraded.aclose()


async def test_closing_the_upgraded_socket_ends_a_waiting_read() -> None:
    stream, peer = _socket_pair()
    with peer:
        upgraded = UpgradedStream(stream, b"")
        failures: list[type[BaseException]] = []

        async def read() -> None:
            try:
                await upgraded.receive_some(100)
            except trio.ClosedResourceError as exc:
                failures.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await upgraded.aclose()
        assert failures == [trio.ClosedResourceError]
        with pytest.raises(trio.ClosedResourceError):
            await upgraded.receive_some(100)
