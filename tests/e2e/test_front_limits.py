"""Abusive visitors at the public listener get their clean refusal (431 for header floods,
408 for a slowloris) and their connection closed, while everyone else keeps being served
through the tunnel."""

from __future__ import annotations

import pytest
import trio

from .conftest import ConnectorFactory, EdgeFactory, RunningEdge
from .origin import Origin
from .visitor import fetch, open_connection, status_of

pytestmark = pytest.mark.e2e

HANG_GUARD = 20.0
HOST = "app.example.test"
TRICKLE_INTERVAL = 0.2  # the attack's own pace, not a wait for readiness


async def send_and_read_until_closed(edge: RunningEdge, request: bytes) -> bytes:
    """Send `request` while reading the answer; the edge may close before it has all of it."""
    received = bytearray()
    async with await open_connection(edge.public) as stream:

        async def send() -> None:
            try:
                await stream.send_all(request)
            except trio.BrokenResourceError:
                pass  # the edge stopped reading: expected for a flood

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass
            nursery.cancel_scope.cancel()
    return bytes(received)


async def assert_still_serving(edge: RunningEdge, index: int) -> None:
    response = await fetch(edge.public, HOST, f"/item/{index}")
    assert (response.status, response.body) == (200, f"item {index}".encode())


def request_with(headers: bytes) -> bytes:
    return b"GET /hello HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + headers + b"\r\n"


async def test_header_floods_get_431_and_the_edge_keeps_serving(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("app", HOST)
    await connector_factory(edge, credentials, origin[1])
    one_megabyte_header = b"X-Flood: " + b"a" * (1 << 20) + b"\r\n"
    ten_thousand_headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    # Small enough for the byte limit (32 KiB): only the count limit (100) refuses it.
    two_hundred_tiny_headers = b"".join(b"h%d:\r\n" % i for i in range(200))
    with trio.fail_after(HANG_GUARD):
        for index, headers in enumerate(
            (one_megabyte_header, ten_thousand_headers, two_hundred_tiny_headers)
        ):
            raw = await send_and_read_until_closed(edge, request_with(headers))
            assert status_of(raw) == 431, raw[:300]
            await assert_still_serving(edge, index)
    assert origin[0].requests == 3  # no flood reached the origin


async def test_slowloris_gets_408_from_the_header_timeout_while_others_are_served(
    edge_factory: EdgeFactory, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    edge = await edge_factory(extra='[http]\nheader_timeout = "1s"\n')
    credentials = edge.create_tunnel("app", HOST)
    await connector_factory(edge, credentials, origin[1])
    received = bytearray()
    lines_sent = 0
    answered = trio.Event()
    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as stream:

            async def trickle() -> None:
                """A header line every TRICKLE_INTERVAL until the edge answers."""
                nonlocal lines_sent
                try:
                    await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: " + HOST.encode())
                    while True:
                        with trio.move_on_after(TRICKLE_INTERVAL):
                            await answered.wait()
                            return
                        await stream.send_all(b"\r\nX-Slow-%d: still coming" % lines_sent)
                        lines_sent += 1
                except trio.BrokenResourceError:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                # Served while the slow head is still arriving on its own connection.
                await assert_still_serving(edge, 1)
                # The edge's answer and its close are the signal that the timeout fired.
                try:
                    while chunk := await stream.receive_some(65536):
                        received += chunk
                        answered.set()
                except trio.BrokenResourceError:
                    pass
                answered.set()
        assert status_of(bytes(received)) == 408, bytes(received)[:300]
        assert lines_sent >= 1  # it really was trickling, not idle
        await assert_still_serving(edge, 2)
    assert origin[0].requests == 2
