"""Request bodies: streamed in pieces with bounded memory, 100-continue, caps and stalls."""

from __future__ import annotations

from functools import partial

import h11
import trio
import trio.lowlevel
import trio.testing

from edge.http11 import (
    ClientDisconnected,
    HttpLimits,
    IncomingRequest,
    PayloadTooLarge,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)

from .wire import (
    PEER,
    Recorder,
    open_connection,
    parse_responses,
    read_to_eof,
    read_until,
    request,
    run_raw,
)

TWENTY_MB = 20 * 1024 * 1024
PIECE = 256 * 1024


class CountingStream(trio.abc.HalfCloseableStream):
    """Counts the bytes the server pulls off the wire, to prove it does not read ahead."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        self.received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def stream_large_body(chunked: bool) -> None:
    client, server = trio.testing.memory_stream_pair()
    counting = CountingStream(server)
    pieces: list[int] = []
    worst_read_ahead = 0

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        nonlocal worst_read_ahead
        head_bytes = counting.received
        delivered = 0
        while chunk := await body.receive_some(65536):
            delivered += len(chunk)
            pieces.append(len(chunk))
            worst_read_ahead = max(worst_read_ahead, counting.received - head_bytes - delivered)
            await trio.lowlevel.checkpoint()
        payload = str(delivered).encode()
        await respond.start(200, [(b"content-length", str(len(payload)).encode())])
        await respond.send(payload)
        await respond.end()

    async def send_body() -> None:
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "app.example.com")]
        headers.append(
            ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(TWENTY_MB))
        )
        await client.send_all(conn.send(h11.Request(method="PUT", target="/up", headers=headers)))
        block = b"z" * PIECE
        for _ in range(TWENTY_MB // PIECE):
            await client.send_all(conn.send(h11.Data(data=block)))
            await trio.lowlevel.checkpoint()
        await client.send_all(conn.send(h11.EndOfMessage()))
        await client.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                serve_http_connection,
                counting,
                handler,
                limits=HttpLimits(),
                client_ip=PEER,
                scheme="https",
                trusted_proxies=(),
            )
        )
        nursery.start_soon(send_body)
        response = await read_to_eof(client)
        await client.aclose()
    assert response.endswith(str(TWENTY_MB).encode())
    assert sum(pieces) == TWENTY_MB
    assert len(pieces) >= TWENTY_MB // 65536
    assert max(pieces) <= 65536
    # The server never holds more than one socket read (plus chunk framing) beyond what the
    # handler has taken: memory stays bounded however large the body is.
    assert worst_read_ahead <= 2 * 65536


async def test_content_length_body_of_20_mb_is_streamed_in_pieces() -> None:
    await stream_large_body(chunked=False)


async def test_chunked_body_of_20_mb_is_streamed_in_pieces() -> None:
    await stream_large_body(chunked=True)


async def test_receive_some_honours_max_bytes() -> None:
    seen: list[bytes] = []

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        while chunk := await body.receive_some(3):
            seen.append(chunk)
        assert await body.receive_some() == b""
        await respond.start(204, [])
        await respond.end()

    raw = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 10\r\n\r\n0123456789"
    await run_raw(raw, handler)
    assert seen == [b"012", b"345", b"678", b"9"]


async def test_100_continue_is_sent_only_when_the_handler_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered = trio.Event()
    go = trio.Event()

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        assert request.expects_continue
        entered.set()
        await go.wait()
        data = bytearray()
        while chunk := await body.receive_some():
            data += chunk
        await respond.start(200, [(b"content-length", str(len(data)).encode())])
        await respond.send(bytes(data))
        await respond.end()

    async with open_connection(handler) as stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: app.example.com\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        await entered.wait()
        with trio.move_on_after(30) as quiet:
            await stream.receive_some(65536)
        assert quiet.cancelled_caught, "the server spoke before the handler read the body"
        go.set()
        interim = await read_until(stream, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"hello")
        final = await read_until(stream, b"hello")
    assert final.startswith(b"HTTP/1.1 200 OK")


async def test_no_100_continue_when_the_handler_answers_without_reading() -> None:
    async def refuses(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        await respond.error(403, "Forbidden", "No uploads here.")

    raw = (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    data = await run_raw(raw, refuses)
    assert b"100 Continue" not in data
    assert [r.status for r in parse_responses(data)] == [403]


async def test_declared_length_over_the_cap_gets_413_before_the_handler_runs() -> None:
    recorder = Recorder()
    raw = (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nExpect: 100-continue\r\n"
        b"Content-Length: 11\r\n\r\n"
    )
    data = await run_raw(raw, recorder, limits=HttpLimits(max_body_bytes=10))
    assert b"100 Continue" not in data
    assert [r.status for r in parse_responses(data)] == [413]
    assert recorder.requests == []


async def test_chunked_body_over_the_cap_gets_413_while_streaming() -> None:
    caught: list[BaseException] = []

    async def reader(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        try:
            while await body.receive_some():
                pass
        except PayloadTooLarge as exc:
            caught.append(exc)
            raise
        await respond.start(204, [])
        await respond.end()

    raw = (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n"
    )
    data = await run_raw(raw, reader, limits=HttpLimits(max_body_bytes=10))
    assert [r.status for r in parse_responses(data)] == [413]
    assert len(caught) == 1
    ok = await run_raw(raw, reader, limits=HttpLimits(max_body_bytes=16))
    assert [r.status for r in parse_responses(ok)] == [204]


async def test_a_stalled_body_gets_408(autojump_clock: trio.testing.MockClock) -> None:
    limits = HttpLimits(body_timeout=20)
    async with open_connection(Recorder(), limits=limits) as stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 10\r\n\r\n01234"
        )
        start = trio.current_time()
        data = await read_to_eof(stream)
        assert trio.current_time() - start == 20
    assert [r.status for r in parse_responses(data)] == [408]


async def test_a_client_that_leaves_mid_body_is_reported_as_gone() -> None:
    outcome: list[type[BaseException]] = []

    async def reader(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        try:
            while await body.receive_some():
                pass
        except ClientDisconnected as exc:
            outcome.append(type(exc))
            raise

    raw = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 10\r\n\r\n01234"
    assert await run_raw(raw, reader) == b""
    assert outcome == [ClientDisconnected]


async def test_malformed_chunked_body_is_refused() -> None:
    async def reader(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        while await body.receive_some():
            pass
        await respond.start(204, [])
        await respond.end()

    raw = (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nnope\r\n0\r\n\r\n"
    )
    assert [r.status for r in parse_responses(await run_raw(raw, reader))] == [400]


async def test_body_errors_raised_inside_a_handler_nursery_keep_their_status() -> None:
    async def pumping(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        async def pump() -> None:
            while await body.receive_some():
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)

    raw = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"10\r\n0123456789abcdef\r\n0\r\n\r\n"
    data = await run_raw(raw, pumping, limits=HttpLimits(max_body_bytes=8))
    assert [r.status for r in parse_responses(data)] == [413]


async def test_a_body_error_repeats_on_later_reads() -> None:
    errors: list[str] = []

    async def stubborn(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        for _ in range(2):
            try:
                while await body.receive_some():
                    pass
            except PayloadTooLarge:
                errors.append("413")
        await respond.error(413)

    raw = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"10\r\n0123456789abcdef\r\n0\r\n\r\n"
    data = await run_raw(raw, stubborn, limits=HttpLimits(max_body_bytes=8))
    assert errors == ["413", "413"]
    assert [r.status for r in parse_responses(data)] == [413]


async def test_a_body_read_in_large_pieces_stops_at_its_length_before_a_pipelined_request() -> None:
    body = bytes(range(256)) * 2800  # 716,800 bytes
    pieces: list[int] = []
    received: list[bytes] = []

    async def handler(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        data = b""
        while chunk := await body.receive_some(256 * 1024):
            pieces.append(len(chunk))
            data += chunk
        received.append(data)
        await respond.start(204, [])
        await respond.end()

    raw = request("/up", method="PUT", body=body) + request("/next")
    responses = parse_responses(await run_raw(raw, handler))
    assert [r.status for r in responses] == [204, 204]
    assert received == [body, b""]
    assert max(pieces) == 256 * 1024  # the handler's piece size, not the head's read size
