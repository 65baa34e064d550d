"""Message framing of the edge's own HTTP/1.1 codec: lengths that must agree, chunked bodies
with trailers, responses answered in one write, and headers that could split a response."""

from __future__ import annotations

import pytest
import trio

from edge.http11 import IncomingRequest, RequestBody, ResponseStateError, ResponseWriter
from edge.http_messages import ClientIO, HttpLimits

from .wire import Recorder, parse_responses, request, run_raw


async def test_a_repeated_equal_content_length_is_one_length() -> None:
    recorder = Recorder()
    raw = (
        b"POST /a HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5, 5\r\n\r\nhello"
        + request("/b")
    )
    responses = parse_responses(await run_raw(raw, recorder))
    assert [r.status for r in responses] == [200, 200]
    assert recorder.bodies == [b"hello", b""]
    assert recorder.requests[0].content_length == 5


async def test_chunked_body_with_extensions_and_trailers_then_a_pipelined_request() -> None:
    recorder = Recorder()
    raw = (
        b"POST /a HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Checksum: 12\r\n\r\n" + request("/b")
    )
    responses = parse_responses(await run_raw(raw, recorder))
    assert [r.status for r in responses] == [200, 200]
    assert recorder.bodies == [b"abcde", b""]
    assert recorder.requests[0].chunked
    assert recorder.requests[0].has_body
    assert not recorder.requests[1].has_body


@pytest.mark.parametrize(
    "chunks",
    [b"3\nabc\r\n0\r\n\r\n", b"3\r\nabcX\r\n0\r\n\r\n", b"zz\r\n", b"0\r\nbad trailer\r\n\r\n"],
    ids=["bare-lf-size", "data-longer-than-size", "bad-size", "bad-trailer"],
)
async def test_malformed_chunk_framing_is_refused(chunks: bytes) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    responses = parse_responses(await run_raw(raw + chunks, Recorder()))
    assert [r.status for r in responses] == [400]


class CountingStream(trio.abc.Stream):
    """A stream that records each write, to see how a response was cut."""

    def __init__(self, incoming: bytes) -> None:
        self.writes: list[bytes] = []
        self._incoming = incoming

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self._incoming = self._incoming, b""
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def writer_for(stream: CountingStream, http_version: str = "1.1") -> ResponseWriter:
    io = ClientIO(stream, HttpLimits())
    incoming = IncomingRequest(
        method="GET", host="app.example.com", port=None, path="/", query=None, headers=[],
        client_ip="192.0.2.1", peer_ip="192.0.2.1", scheme="https", http_version=http_version,
        is_websocket_upgrade=False, expects_continue=False, content_length=None,
        request_id="r1",
    )
    body = RequestBody(io, length=None, chunked=False, expects_continue=False)
    return ResponseWriter(io, incoming, body, upgrade_requested=False)


async def test_a_whole_small_response_is_one_write() -> None:
    stream = CountingStream(b"")
    respond = writer_for(stream)
    await respond.start(200, [(b"Content-Length", b"5")], body=b"hello", end=True)
    assert respond.finished
    assert not respond.must_close
    assert stream.writes == [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]


async def test_a_streamed_response_without_length_is_chunked_from_its_first_write() -> None:
    stream = CountingStream(b"")
    respond = writer_for(stream)
    await respond.start(200, [], body=b"abc")
    await respond.send(b"de")
    await respond.end()
    assert b"".join(stream.writes) == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "header",
    [(b"X-A", b"one\r\nSet-Cookie: evil=1"), (b"X A", b"v"), (b"X-A", b"nul\x00")],
    ids=["crlf-in-value", "space-in-name", "nul-in-value"],
)
async def test_response_headers_that_could_split_the_response_are_refused(
    header: tuple[bytes, bytes],
) -> None:
    stream = CountingStream(b"")
    respond = writer_for(stream)
    with pytest.raises(ResponseStateError):
        await respond.start(200, [header])
    assert respond.must_close
    assert stream.writes == []


async def test_body_beyond_the_declared_length_is_refused() -> None:
    stream = CountingStream(b"")
    respond = writer_for(stream)
    await respond.start(200, [(b"Content-Length", b"2")])
    with pytest.raises(ResponseStateError):
        await respond.send(b"toolong")
    assert respond.must_close


async def test_remembered_response_headers_are_written_as_checked_and_stay_bounded() -> None:
    from edge import http_response

    for _ in range(2):  # the second answer is served from the table of checked headers
        stream = CountingStream(b"")
        respond = writer_for(stream)
        await respond.start(200, [(b"Server", b" nginx \t"), (b"Content-Length", b"0")],
                            end=True)
        assert b"".join(stream.writes) == (
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"
        )
    # A bad value under a name seen before is checked on its own, and refused every time.
    for _ in range(2):
        respond = writer_for(CountingStream(b""))
        with pytest.raises(ResponseStateError):
            await respond.start(200, [(b"Server", b"nginx\r\nSet-Cookie: evil=1")])
    for n in range(http_response._CHECKED_HEADERS_MAX + 10):
        http_response._checked_header(b"X-N", str(n).encode())
    assert len(http_response._CHECKED_HEADERS) <= http_response._CHECKED_HEADERS_MAX


def test_remembered_request_lines_parse_alike_and_stay_bounded() -> None:
    from edge import request_head
    from edge.canonical import BadRequest

    head = b"GET / HTTP/1.1\r\nHost: app\r\nX-Pad: v \t\r\n\r\n"
    for _ in range(2):  # the second head is parsed from the table of lines seen
        assert request_head.parse_head(head) == (
            "GET", b"/", "1.1", [(b"Host", b"app"), (b"X-Pad", b"v")]
        )
    # A bad line is refused every time, however many good lines were remembered.
    for _ in range(2):
        with pytest.raises(BadRequest):
            request_head.parse_head(b"GET / HTTP/1.1\r\nHost: app\r\nBad Name: v\r\n\r\n")
    long_line = b"X-Long: " + b"x" * request_head._PARSED_LINE_MAX
    request_head.parse_head(b"GET / HTTP/1.1\r\n" + long_line + b"\r\n\r\n")
    assert long_line not in request_head._PARSED_LINES
    for n in range(request_head._PARSED_LINES_MAX + 10):
        request_head.parse_head(b"GET / HTTP/1.1\r\nX-N: %d\r\n\r\n" % n)
    assert len(request_head._PARSED_LINES) <= request_head._PARSED_LINES_MAX


async def test_headers_a_response_names_in_connection_are_dropped_even_when_invalid() -> None:
    stream = CountingStream(b"")
    respond = writer_for(stream)
    await respond.start(
        200,
        [(b"X-Hop", b"bad\r\nvalue"), (b"Connection", b"close, X-Hop"), (b"Content-Length", b"0")],
        end=True,
    )
    assert b"".join(stream.writes) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert respond.must_close


@pytest.mark.parametrize("connection", [b"keep-alive", b"", None])
async def test_an_invalid_header_not_named_in_connection_is_refused(
    connection: bytes | None,
) -> None:
    headers = [(b"X-Bad", b"split\r\nSet-Cookie: x=1"), (b"Content-Length", b"0")]
    if connection is not None:
        headers.append((b"Connection", connection))
    respond = writer_for(CountingStream(b""))
    with pytest.raises(ResponseStateError, match="X-Bad"):
        await respond.start(200, headers)
    assert respond.must_close


async def test_a_write_that_must_wait_keeps_later_writes_behind_it() -> None:
    import socket

    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
    io = ClientIO(stream, HttpLimits())
    first, second = b"a" * 1_000_000, b"b" * 10
    received = bytearray()
    with right:
        right.setblocking(False)

        async def read_all() -> None:
            while len(received) < len(first) + len(second):
                await trio.lowlevel.wait_readable(right)
                received.extend(right.recv(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(io.send, first)  # too large for the socket buffer: it waits
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(io.send, second)  # must not slip in between the two halves
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read_all)
        await stream.aclose()
    assert bytes(received) == first + second


async def test_a_header_list_seen_before_answers_alike_with_its_own_framing() -> None:
    headers = [(b"Server", b"nginx"), (b"Connection", b"close"), (b"Content-Length", b"2")]
    for method in ("GET", "GET", "HEAD"):
        stream = CountingStream(b"")
        respond = writer_for(stream)
        respond._request.method = method
        await respond.start(200, list(headers), body=b"ok" if method == "GET" else b"",
                            end=True)
        assert respond.must_close  # named in this answer's Connection, every time
        expected = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        assert b"".join(stream.writes) == expected + (b"ok" if method == "GET" else b"")
