"""The connector's HTTP/1.1 client codec: requests written byte-exact, responses framed
strictly (chunked, length, to-close), and connections reused only when that is safe."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from connector.errors import OriginUnreachable
from connector.origin_pool import (
    BODY_CHUNK,
    InvalidRequest,
    OriginConnection,
    encode_request_head,
)


def connection_with_answer(answer: bytes, *, piece: int = 7) -> OriginConnection:
    """An origin connection whose origin sends ``answer`` in ``piece``-byte reads, then EOF."""
    pieces = [answer[offset : offset + piece] for offset in range(0, len(answer), piece)]
    return connection_with_pieces(pieces)[0]


def connection_with_pieces(pieces: list[bytes]) -> tuple[OriginConnection, list[int]]:
    """An origin connection whose origin sends exactly these pieces, then EOF; and the
    ``max_bytes`` of every read the connection made."""
    incoming = trio.testing.MemoryReceiveStream()
    asked: list[int] = []
    left = list(pieces)

    async def next_piece() -> None:
        if left:
            incoming.put_data(left.pop(0))
        else:
            incoming.put_eof()

    incoming.receive_some_hook = next_piece
    real_receive = incoming.receive_some

    async def receive_some(max_bytes: int | None = None) -> bytes | bytearray:
        asked.append(max_bytes or 0)
        return await real_receive(max_bytes)

    incoming.receive_some = receive_some  # type: ignore[method-assign]
    stream = trio.StapledStream(trio.testing.MemorySendStream(), incoming)
    return OriginConnection(stream), asked



async def read_all(conn: OriginConnection) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    head = await conn.read_head()
    while head.status < 200:
        head = await conn.read_head()
    body = b""
    while data := await conn.read_body():
        body += data
    return head.status, head.headers, body


def test_request_head_is_written_byte_exact() -> None:
    head = encode_request_head(
        b"POST", b"/upload?x=1", [(b"Host", b"app.internal"), (b"X-Pad", b" spaced\t")]
    )
    assert head == b"POST /upload?x=1 HTTP/1.1\r\nHost: app.internal\r\nX-Pad: spaced\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"X-A", b"one\r\nX-Injected: two")]),
        (b"GET", b"/", [(b"X A", b"v")]),
        (b"GET", b"/", [(b"X-A", b"nul\x00")]),
        (b"GET", b"/a b", []),
        (b"G ET", b"/", []),
    ],
    ids=["crlf-in-value", "space-in-name", "nul-in-value", "space-in-target", "bad-method"],
)
def test_request_head_that_could_split_is_refused(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(InvalidRequest):
        encode_request_head(method, target, headers)


async def test_chunked_response_with_extensions_and_trailers() -> None:
    conn = connection_with_answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    status, headers, body = await read_all(conn)
    assert (status, body) == (200, b"hello world")
    assert (b"X-A", b"1") in headers
    assert conn.response_done
    assert conn.reusable


async def test_interim_answers_are_skipped_and_length_is_honoured() -> None:
    conn = connection_with_answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nbody"
    )
    assert await read_all(conn) == (201, [(b"Content-Length", b"4")], b"body")
    assert conn.reusable


async def test_body_until_close_is_read_whole_and_never_reused() -> None:
    conn = connection_with_answer(b"HTTP/1.1 200 OK\r\n\r\nall of it", piece=3)
    assert (await read_all(conn))[2] == b"all of it"
    assert not conn.reusable


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["http10", "connection-close"],
)
async def test_answers_that_end_the_connection_are_not_reused(answer: bytes) -> None:
    conn = connection_with_answer(answer)
    assert (await read_all(conn))[2] == b"ok"
    assert not conn.reusable


async def test_head_and_204_have_no_body_whatever_their_length_says() -> None:
    conn = connection_with_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    head = await conn.read_head(head_request=True)
    assert head.status == 200
    assert conn.response_done
    conn = connection_with_answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
    await conn.read_head()
    assert conn.response_done


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX A: one\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=["te-and-cl", "two-lengths", "negative", "gzip", "obs-fold", "space-in-name",
         "no-status", "not-http"],
)
async def test_ambiguous_or_broken_framing_is_unreachable(answer: bytes) -> None:
    conn = connection_with_answer(answer)
    with pytest.raises(OriginUnreachable):
        await read_all(conn)
    assert not conn.reusable


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
    ids=["bad-size", "data-longer-than-size", "short-length", "cut-chunk"],
)
async def test_bodies_that_break_their_framing_are_unreachable(answer: bytes) -> None:
    conn = connection_with_answer(answer)
    with pytest.raises(OriginUnreachable):
        await read_all(conn)


async def test_oversized_response_head_is_refused() -> None:
    conn = connection_with_answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, piece=8192)
    with pytest.raises(OriginUnreachable, match="exceeds"):
        await conn.read_head()


async def test_response_header_values_lose_their_surrounding_blanks_only() -> None:
    cookie = b"session=" + b"v" * 3000
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padded:   a  b \t \r\nX-Tight:v\r\n"
        b"X-Tab:\tin\tside\t\r\nSet-Cookie: " + cookie + b"    \r\n\r\nok"
    )
    status, headers, body = await read_all(connection_with_answer(answer, piece=4096))
    assert (status, body) == (200, b"ok")
    values = {name.lower(): value for name, value in headers}
    assert values[b"x-padded"] == b"a  b"
    assert values[b"x-tight"] == b"v"
    assert values[b"x-tab"] == b"in\tside"
    assert values[b"set-cookie"] == cookie


async def test_a_long_body_is_read_in_large_pieces_and_never_past_its_end() -> None:
    body = bytes(range(256)) * 2500  # 640,000 bytes
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    after = b"HTTP/1.1 204 No Content\r\n\r\n"
    conn, asked = connection_with_pieces([head, body[:300_000], body[300_000:] + after])
    status, _headers, received = await read_all(conn)
    assert (status, received) == (200, body)
    # Reads of the body ask for up to BODY_CHUNK, and never for more than the body has left.
    assert asked[1:] == [BODY_CHUNK, BODY_CHUNK, len(body) - 2 * BODY_CHUNK]
    assert conn.reusable
    conn.start_exchange()
    assert (await conn.read_head()).status == 204


async def test_an_origin_that_closes_inside_a_long_body_is_unreachable() -> None:
    conn, _asked = connection_with_pieces(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 1000]
    )
    await conn.read_head()
    assert await conn.read_body() == b"x" * 1000
    with pytest.raises(OriginUnreachable, match="mid-exchange"):
        await conn.read_body()
    assert not conn.reusable


def test_remembered_request_headers_are_checked_once_and_stay_bounded() -> None:
    from connector import origin_pool

    for _ in range(2):  # the second head is written from the table of checked lines
        head = encode_request_head(b"GET", b"/", [(b"Host", b"app"), (b"X-Pad", b" v\t")])
        assert head == b"GET / HTTP/1.1\r\nHost: app\r\nX-Pad: v\r\n\r\n"
    # A bad value under a name seen before is checked on its own, and refused every time.
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            encode_request_head(b"GET", b"/", [(b"Host", b"app\r\nX-Injected: 1")])
    long_value = b"x" * (origin_pool._CHECKED_LINE_MAX + 1)
    encode_request_head(b"GET", b"/", [(b"X-Long", long_value)])
    assert (b"X-Long", long_value) not in origin_pool._CHECKED_REQUEST_LINES
    for n in range(origin_pool._CHECKED_LINES_MAX + 10):
        encode_request_head(b"GET", b"/", [(b"X-N", str(n).encode())])
    assert len(origin_pool._CHECKED_REQUEST_LINES) <= origin_pool._CHECKED_LINES_MAX


async def test_remembered_response_lines_parse_alike_and_stay_bounded() -> None:
    from connector import origin_pool

    answer = b"HTTP/1.1 200 OK\r\nServer: nginx  \r\nContent-Length: 2\r\n\r\nok"
    for _ in range(2):  # the second head is parsed from the table of lines seen
        status, headers, body = await read_all(connection_with_answer(answer))
        assert (status, headers, body) == (
            200, [(b"Server", b"nginx"), (b"Content-Length", b"2")], b"ok"
        )
    # A bad line is refused every time, however many good lines were remembered.
    bad = b"HTTP/1.1 200 OK\r\nServer: nginx  \r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok"
    for _ in range(2):
        with pytest.raises(OriginUnreachable, match="bad header line"):
            await connection_with_answer(bad).read_head()
    for n in range(origin_pool._CHECKED_LINES_MAX + 10):
        line = b"HTTP/1.1 204 No Content\r\nX-N: %d\r\n\r\n" % n
        await connection_with_answer(line, piece=len(line)).read_head()
    assert len(origin_pool._PARSED_RESPONSE_LINES) <= origin_pool._CHECKED_LINES_MAX


async def test_a_repeated_head_is_parsed_once_and_framed_for_each_request() -> None:
    answer = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 5\r\n\r\nhello"
    first = connection_with_answer(answer)
    assert await read_all(first) == (200, [(b"Server", b"t"), (b"Content-Length", b"5")],
                                      b"hello")
    # The same bytes again: the parsed head is shared, the framing is this request's own.
    again = connection_with_answer(answer)
    shared = await again.read_head()
    assert shared is (await connection_with_answer(answer).read_head())
    assert await again.read_body() == b"hello"
    for_head = connection_with_answer(answer)
    head = await for_head.read_head(head_request=True)
    assert head is shared
    assert for_head.response_done  # a HEAD request's answer has no body, whatever it says


async def test_a_head_that_fails_is_refused_every_time() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(2):
        with pytest.raises(OriginUnreachable, match="both Transfer-Encoding and Content-Length"):
            await connection_with_answer(answer).read_head()
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    for _ in range(2):
        conn = connection_with_answer(closing)
        await conn.read_head()
        assert not conn.reusable
