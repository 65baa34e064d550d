"""Protocol upgrades: the 101 hand-off gives raw bytes; a refused upgrade ends the connection."""

from __future__ import annotations

import pytest

from edge.http11 import IncomingRequest, RequestBody, ResponseStateError, ResponseWriter

from .wire import Recorder, open_connection, parse_responses, read_to_eof, read_until, run_raw

WS_REQUEST = (
    b"GET /socket HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def test_upgrade_hands_over_the_connection_with_buffered_bytes_first() -> None:
    chunks: list[bytes] = []
    seen: list[IncomingRequest] = []

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        seen.append(request)
        raw = await respond.upgrade(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
        assert respond.started
        while sum(map(len, chunks)) < len(b"EARLY+LATE"):
            chunks.append(bytes(await raw.receive_some(100)))
        await raw.send_all(b"echo:" + b"".join(chunks))

    async with open_connection(handler) as stream:
        await stream.send_all(WS_REQUEST + b"EARLY+")
        head = await read_until(stream, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Upgrade: websocket" in head
        await stream.send_all(b"LATE")
        rest = await read_to_eof(stream)
    assert chunks[0] == b"EARLY+"
    assert rest.endswith(b"echo:EARLY+LATE")
    request = seen[0]
    assert request.is_websocket_upgrade
    assert request.header(b"upgrade") == b"websocket"
    assert request.header(b"connection") == b"Upgrade"
    assert request.header(b"sec-websocket-key") == b"dGhlIHNhbXBsZSBub25jZQ=="


async def test_a_refused_upgrade_closes_the_connection_before_pipelined_requests() -> None:
    recorder = Recorder()
    data = await run_raw(
        WS_REQUEST + b"GET /smuggled HTTP/1.1\r\nHost: app.example.com\r\n\r\n", recorder
    )
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200]
    assert [r.path for r in recorder.requests] == ["/socket"]


async def test_upgrade_needs_an_upgrade_request() -> None:
    problems: list[str] = []

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        with pytest.raises(ResponseStateError):
            await respond.upgrade(101, [])
        problems.append("refused")
        await respond.start(204, [])
        await respond.end()

    data = await run_raw(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n", handler)
    assert problems == ["refused"]
    assert parse_responses(data)[0].status == 204


async def test_non_websocket_upgrades_are_not_flagged() -> None:
    recorder = Recorder()
    raw = (
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    await run_raw(raw, recorder)
    request = recorder.requests[0]
    assert not request.is_websocket_upgrade
    assert request.header(b"upgrade") is None
    assert request.header(b"http2-settings") is None
