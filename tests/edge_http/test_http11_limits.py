"""Hostile heads: bad syntax, oversized heads, slowloris, idle connections, host conflicts."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from edge.http11 import HttpLimits

from .wire import (
    Recorder,
    open_connection,
    parse_responses,
    read_to_eof,
    read_until,
    request,
    run_raw,
)

NEXT = b"GET /next HTTP/1.1\r\nHost: app.example.com\r\n\r\n"


async def refused(
    raw: bytes, *, limits: HttpLimits | None = None, server_name: str | None = None
) -> tuple[int, Recorder, bytes]:
    """Send ``raw`` followed by a valid request; return the status, the recorder, the bytes."""
    recorder = Recorder()
    data = await run_raw(raw + NEXT, recorder, limits=limits, server_name=server_name)
    responses = parse_responses(data)
    assert len(responses) == 1, "the connection must close after a refused request"
    assert responses[0].header(b"connection") == b"close"
    return responses[0].status, recorder, data


BAD_SYNTAX = {
    "obs-fold": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: one\r\n\ttwo\r\n\r\n",
    "space-before-first-header": b"GET / HTTP/1.1\r\n Host: app.example.com\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: app.example.com\n\n",
    "bare-lf-one-line": b"GET / HTTP/1.1\r\nHost: app.example.com\nX-A: b\r\n\r\n",
    "bare-lf-terminator": b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: b\rc\r\n\r\n",
    "bare-cr-line-end": b"GET / HTTP/1.1\rHost: app.example.com\r\n\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX A: b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : app.example.com\r\n\r\n",
    "paren-in-name": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX(A): b\r\n\r\n",
    "control-in-name": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX\x01A: b\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\nHost: app.example.com\r\n: b\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: a\x00b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nHost: evil.example\r\n\r\n",
    "two-equal-hosts": b"GET / HTTP/1.1\r\nHost: app.example.com\r\nHost: app.example.com\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "no-host-http10": b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n",
    "empty-host": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "host-with-userinfo": b"GET / HTTP/1.1\r\nHost: evil.example@app.example.com\r\n\r\n",
    "host-with-path": b"GET / HTTP/1.1\r\nHost: app.example.com/x\r\n\r\n",
    "non-ascii-host": b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n",
    "absolute-form-other-host": (
        b"GET http://evil.example/ HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
    ),
    "absolute-form-other-port": (
        b"GET http://app.example.com:81/ HTTP/1.1\r\nHost: app.example.com:82\r\n\r\n"
    ),
    "absolute-form-userinfo": (
        b"GET http://u@app.example.com/ HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
    ),
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "connect": b"CONNECT app.example.com:443 HTTP/1.1\r\nHost: app.example.com:443\r\n\r\n",
    "encoded-slash": b"GET /a%2Fb HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "backslash": b"GET /a\\b HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "length-and-chunked": (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two-lengths": (
        b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab"
    ),
    "bad-length": b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: x\r\n\r\n",
    "negative-length": b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: -1\r\n\r\n",
    "garbage-request-line": b"HELLO\r\nHost: app.example.com\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
}


@pytest.mark.parametrize("raw", BAD_SYNTAX.values(), ids=BAD_SYNTAX.keys())
async def test_bad_syntax_is_refused_with_400_and_closes_the_connection(raw: bytes) -> None:
    status, recorder, data = await refused(raw)
    assert status == 400
    assert recorder.requests == []
    assert b"Bad request" in data


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\nHost: app.example.com\r\n\r\n", 505),
        (
            b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
    ],
)
async def test_unsupported_protocol_features_get_their_status(raw: bytes, status: int) -> None:
    got, recorder, _ = await refused(raw)
    assert got == status
    assert recorder.requests == []


async def test_underscore_header_names_are_accepted() -> None:
    recorder = Recorder()
    raw = request("/", headers=[("X_Custom", "1")])
    responses = parse_responses(await run_raw(raw, recorder))
    assert responses[0].status == 200
    assert recorder.requests[0].header(b"x-custom") == b"1"


async def test_a_one_megabyte_header_gets_431() -> None:
    raw = request("/", headers=[("X-Big", "a" * (1 << 20))])
    status, recorder, _ = await refused(raw)
    assert status == 431
    assert recorder.requests == []


async def test_ten_thousand_headers_get_431() -> None:
    raw = request("/", headers=[(f"X-H{i}", "v") for i in range(10_000)])
    status, _, _ = await refused(raw)
    assert status == 431


async def test_header_count_is_capped_even_when_small() -> None:
    raw = request("/", headers=[(f"X-H{i}", "v") for i in range(20)])
    status, _, _ = await refused(raw, limits=HttpLimits(max_headers=10))
    assert status == 431
    recorder = Recorder()
    ok = parse_responses(await run_raw(raw, recorder, limits=HttpLimits(max_headers=21)))
    assert ok[0].status == 200


async def test_head_exactly_at_the_size_limit_passes_and_one_byte_more_fails() -> None:
    base = request("/", headers=[("X-Pad", "")])
    limit = 1024
    padded = request("/", headers=[("X-Pad", "p" * (limit - len(base)))])
    assert len(padded) == limit
    recorder = Recorder()
    limits = HttpLimits(max_header_bytes=limit)
    assert parse_responses(await run_raw(padded, recorder, limits=limits))[0].status == 200
    over = request("/", headers=[("X-Pad", "p" * (limit - len(base) + 1))])
    status, _, _ = await refused(over, limits=limits)
    assert status == 431


@pytest.mark.parametrize("over_socket", [False, True], ids=["memory", "socket"])
async def test_slowloris_header_trickle_gets_408(over_socket: bool, autojump_clock: trio.testing.MockClock) -> None:
    recorder = Recorder()
    limits = HttpLimits(header_timeout=10)
    async with open_connection(recorder, limits=limits, over_socket=over_socket) as stream:
        start = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n")

        async def trickle() -> None:
            try:
                for i in range(1000):
                    await trio.sleep(1)
                    await stream.send_all(f"X-{i}: v\r\n".encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            data = await read_to_eof(stream)
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    assert parse_responses(data)[0].status == 408
    assert 10 <= elapsed < 11
    assert recorder.requests == []


@pytest.mark.parametrize("over_socket", [False, True], ids=["memory", "socket"])
async def test_a_silent_new_connection_is_closed_after_header_timeout(
    over_socket: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_connection(Recorder(), limits=HttpLimits(header_timeout=5),
                               over_socket=over_socket) as stream:
        start = trio.current_time()
        assert await read_to_eof(stream) == b""
        assert trio.current_time() - start == pytest.approx(5)


@pytest.mark.parametrize("over_socket", [False, True], ids=["memory", "socket"])
async def test_idle_keep_alive_connection_is_closed_quietly(
    over_socket: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    limits = HttpLimits(idle_timeout=30, header_timeout=5)
    async with open_connection(Recorder(), limits=limits, over_socket=over_socket) as stream:
        await stream.send_all(request("/"))
        first = await read_until(stream, b"GET /")
        assert first.startswith(b"HTTP/1.1 200")
        start = trio.current_time()
        assert await read_to_eof(stream) == b""
        assert trio.current_time() - start == pytest.approx(30)


@pytest.mark.parametrize("over_socket", [False, True], ids=["memory", "socket"])
async def test_keep_alive_head_started_late_still_gets_the_full_header_timeout(
    over_socket: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    limits = HttpLimits(idle_timeout=30, header_timeout=5)
    recorder = Recorder()
    async with open_connection(recorder, limits=limits, over_socket=over_socket) as stream:
        await stream.send_all(request("/one"))
        await read_until(stream, b"GET /one")
        await trio.sleep(25)
        await stream.send_all(b"GET /two HTTP/1.1\r\n")
        await trio.sleep(4)
        await stream.send_all(b"Host: app.example.com\r\n\r\n")
        second = await read_until(stream, b"GET /two")
    assert second.startswith(b"HTTP/1.1 200")
    assert [r.path for r in recorder.requests] == ["/one", "/two"]


@pytest.mark.parametrize("over_socket", [False, True], ids=["memory", "socket"])
async def test_keep_alive_head_that_stalls_gets_408_a_header_timeout_after_its_first_byte(
    over_socket: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    limits = HttpLimits(idle_timeout=30, header_timeout=5)
    recorder = Recorder()
    async with open_connection(recorder, limits=limits, over_socket=over_socket) as stream:
        await stream.send_all(request("/one"))
        await read_until(stream, b"GET /one")
        await trio.sleep(10)
        started = trio.current_time()
        await stream.send_all(b"GET /two HTTP/1.1\r\n")
        rest = await read_to_eof(stream)
        assert trio.current_time() - started == pytest.approx(5)
    assert parse_responses(rest)[0].status == 408
    assert [r.path for r in recorder.requests] == ["/one"]


async def test_host_must_match_tls_server_name() -> None:
    status, recorder, _ = await refused(
        request("/", host="other.example.com"), server_name="app.example.com"
    )
    assert status == 421
    assert recorder.requests == []
    ok = Recorder()
    responses = parse_responses(
        await run_raw(request("/", host="APP.example.com.:443"), ok, server_name="app.example.com")
    )
    assert responses[0].status == 200


async def test_leading_empty_lines_before_a_request_are_ignored() -> None:
    recorder = Recorder()
    responses = parse_responses(await run_raw(b"\r\n\r\n" + request("/x"), recorder))
    assert responses[0].status == 200
    assert recorder.requests[0].path == "/x"


async def test_a_truncated_head_at_eof_closes_without_an_answer() -> None:
    recorder = Recorder()
    assert await run_raw(b"GET / HTTP/1.1\r\nHost: app.exa", recorder) == b""
    assert recorder.requests == []


async def test_error_page_for_head_request_has_no_body() -> None:
    raw = b"HEAD /a%2Fb HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
    data = await run_raw(raw, Recorder())
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Content-Length:" in head
    assert rest == b""
