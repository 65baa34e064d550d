"""OriginDispatcher against real origins on loopback, through an in-memory tunnel stream."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing
from connector_fake_stream import FakeTunnelStream, http_head, run_exchange
from connector_test_origins import H11Origin, closed_port, serve_tcp, serve_unix

from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.origin import OriginDispatcher
from tunnel.protocol import ErrorCode


def table_for(service: str, **options: object) -> IngressTable:
    return IngressTable([IngressRule(None, None, parse_service(service),
                                     replace(OriginRequest(), **options))])


@pytest.fixture
async def origin(nursery: trio.Nursery) -> tuple[H11Origin, int]:
    server = H11Origin()
    port = await serve_tcp(nursery, server.serve_connection)
    return server, port


async def test_get_is_forwarded_with_host_and_forwarding_headers(
        origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head(
            "/hello?x=1", headers=[("Host", "app.example.com"), ("Accept", "*/*")]))
    assert view.status == 200
    assert view.header("x-origin") == "h11"
    seen = json.loads(view.body)
    assert seen == {"host": "app.example.com", "method": "GET", "xff": "203.0.113.9",
                    "proto": "https"}
    assert server.requests[0][1] == "/hello?x=1"
    assert view.closed


async def test_a_bodiless_request_is_answered_whole_without_reading_its_ended_stream(
        origin: tuple[H11Origin, int]) -> None:
    _server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello"), ended=True)
        streamed = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
    assert view.status == 200
    assert json.loads(view.body)["method"] == "GET"
    # Opened already ended, the stream is never read; the small answer went out whole.
    assert view.extra == {"receives": 0, "whole_responses": 1}
    # A stream the edge may still send on is read first, to learn whether a body follows.
    assert streamed.extra["receives"] == 1
    assert streamed.status == 200


async def test_http_host_header_rewrites_host(origin: tuple[H11Origin, int]) -> None:
    _server, port = origin
    table = table_for(f"http://127.0.0.1:{port}", http_host_header="internal.local")
    async with OriginDispatcher(table) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
    assert json.loads(view.body)["host"] == "internal.local"


def random_chunks(total: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(rng.randint(1, 100_000), total - sent)
        sent += size
        yield rng.randbytes(size)


@pytest.mark.parametrize("framing", ["content-length", "none"])
async def test_streamed_10mb_upload_arrives_intact(origin: tuple[H11Origin, int],
                                                   framing: str) -> None:
    server, port = origin
    total = 10 * 1024 * 1024
    expected = hashlib.sha256()
    for chunk in random_chunks(total, seed=7):
        expected.update(chunk)
    headers = [("Content-Length", str(total))] if framing == "content-length" else []
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream,
                                  http_head("/sha256", method="POST", headers=headers),
                                  random_chunks(total, seed=7))
    assert view.status == 200
    assert json.loads(view.body) == {"sha256": expected.hexdigest(), "size": total}
    origin_headers = server.requests[0][2]
    if framing == "none":
        # No framing header from the edge: the body went to the origin chunked.
        assert origin_headers.get("transfer-encoding") == "chunked"
    else:
        assert origin_headers.get("content-length") == str(total)


async def test_keep_alive_connections_are_reused(origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        for _ in range(3):
            view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
            assert view.status == 200
        view = await run_exchange(dispatcher.serve_stream, http_head(
            "/sha256", method="POST", headers=[("Content-Length", "5")]), [b"hello"])
        assert json.loads(view.body)["size"] == 5
        assert len(dispatcher.pool) == 1
    assert server.accepted == 1


async def test_connection_close_is_not_reused(origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        for _ in range(2):
            view = await run_exchange(dispatcher.serve_stream, http_head("/close"))
            assert (view.status, view.body) == (200, b"bye")
            assert view.header("connection") is None  # hop-by-hop, not forwarded
    assert server.accepted == 2


async def test_idle_connection_closed_by_origin_is_not_used(
        origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        assert (await run_exchange(dispatcher.serve_stream, http_head("/bye"))).status == 200
        # The origin dropped the kept-alive connection; the next request must not fail on it.
        assert (await run_exchange(dispatcher.serve_stream, http_head("/hello"))).status == 200
    assert server.accepted == 2


async def test_idle_connection_expires_after_keep_alive_timeout(
        origin: tuple[H11Origin, int], autojump_clock: trio.testing.MockClock) -> None:
    server, port = origin
    table = table_for(f"http://127.0.0.1:{port}", keep_alive_timeout=10.0)
    async with OriginDispatcher(table) as dispatcher:
        await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        await trio.sleep(5)
        await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert server.accepted == 1
        await trio.sleep(11)
        await run_exchange(dispatcher.serve_stream, http_head("/hello"))
    assert server.accepted == 2


async def test_response_not_fully_read_is_not_reused(origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        stream = FakeTunnelStream(http_head("/big"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dispatcher.serve_stream, stream)
            await stream.edge.send_eof()  # type: ignore[attr-defined]
            await stream.head_sent.wait()
            assert (await stream.edge.receive_some(1000))[:1] == b"x"
            await stream.edge.aclose()  # the visitor went away mid-body
        assert stream.reset_code is None
        assert stream.closed
        assert len(dispatcher.pool) == 0
        assert (await run_exchange(dispatcher.serve_stream, http_head("/hello"))).status == 200
    assert server.accepted == 2


async def test_early_answer_abandons_the_upload(origin: tuple[H11Origin, int]) -> None:
    server, port = origin
    total = 20 * 1024 * 1024
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(
            dispatcher.serve_stream,
            http_head("/reject", method="POST", headers=[("Content-Length", str(total))]),
            random_chunks(total, seed=1))
        assert (view.status, view.body) == (413, b"too big")
        assert len(dispatcher.pool) == 0
    assert server.accepted == 1


async def test_head_request_has_length_but_no_body(origin: tuple[H11Origin, int]) -> None:
    _server, port = origin
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello", method="HEAD"))
        assert view.status == 200
        assert view.end_stream_on_head
        assert view.body == b""
        assert int(view.header("content-length") or 0) > 0
        assert len(dispatcher.pool) == 1  # a HEAD exchange leaves the connection reusable


async def test_refused_origin_resets_unreachable() -> None:
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{closed_port()}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/"))
    assert view.head is None
    assert view.reset_code == ErrorCode.ORIGIN_UNREACHABLE


async def test_silent_origin_resets_timeout(origin: tuple[H11Origin, int],
                                            autojump_clock: trio.testing.MockClock) -> None:
    _server, port = origin
    table = table_for(f"http://127.0.0.1:{port}", response_header_timeout=5.0)
    async with OriginDispatcher(table) as dispatcher:
        start = trio.current_time()
        view = await run_exchange(dispatcher.serve_stream, http_head("/silent"))
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.1)
    assert view.reset_code == ErrorCode.ORIGIN_TIMEOUT


async def test_silent_upload_origin_times_out_after_body(
        origin: tuple[H11Origin, int], autojump_clock: trio.testing.MockClock) -> None:
    _server, port = origin
    table = table_for(f"http://127.0.0.1:{port}", response_header_timeout=5.0)
    async with OriginDispatcher(table) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head(
            "/silent", method="POST", headers=[("Content-Length", "3")]), [b"abc"])
    assert view.reset_code == ErrorCode.ORIGIN_TIMEOUT


async def test_http_status_service_answers_directly() -> None:
    async with OriginDispatcher(table_for("http_status:418")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/anything"))
    assert view.status == 418
    assert view.end_stream_on_head
    assert view.body == b""


async def test_hello_world_shows_the_request_escaped() -> None:
    async with OriginDispatcher(table_for("hello_world")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head(
            "/some/path?q=1", host="demo.example.com",
            headers=[("X-Probe", "<script>alert(1)</script>")]))
    assert view.status == 200
    assert view.header("content-type") == "text/html; charset=utf-8"
    assert int(view.header("content-length") or 0) == len(view.body)
    page = view.body.decode()
    assert "GET demo.example.com/some/path?q=1" in page
    assert "X-Probe" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page


async def test_unix_socket_origin(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = H11Origin()
    socket_path = str(tmp_path / "origin.sock")
    await serve_unix(nursery, server.serve_connection, socket_path)
    async with OriginDispatcher(table_for(f"unix:{socket_path}")) as dispatcher:
        for _ in range(2):
            view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
            assert view.status == 200
            assert json.loads(view.body)["host"] == "app.example.com"
    assert server.accepted == 1


async def test_first_matching_rule_picks_the_origin(origin: tuple[H11Origin, int]) -> None:
    _server, port = origin
    table = IngressTable([
        IngressRule("app.example.com", None, parse_service(f"http://127.0.0.1:{port}")),
        IngressRule(None, None, parse_service("http_status:404")),
    ])
    async with OriginDispatcher(table) as dispatcher:
        hit = await run_exchange(dispatcher.serve_stream,
                                 http_head("/hello", host="APP.example.com:443"))
        miss = await run_exchange(dispatcher.serve_stream, http_head("/", host="other.test"))
    assert hit.status == 200
    assert miss.status == 404


async def test_tcp_stream_to_http_rule_is_refused_with_no_ingress() -> None:
    async with OriginDispatcher(table_for("hello_world")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream,
                                  {"kind": "tcp", "host": "ssh.example.com", "client": "x"})
    assert view.reset_code == ErrorCode.NO_INGRESS


async def test_malformed_head_is_a_protocol_error() -> None:
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{closed_port()}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head(
            "/", headers=[("Bad Name", "x")]))
    assert view.reset_code == ErrorCode.PROTOCOL_ERROR


async def test_request_retried_once_when_reused_connection_turns_out_dead(
        origin: tuple[H11Origin, int], monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = origin
    # Defeat the idle check, so the pool hands out the connection the origin already closed:
    # the race where the origin closes just as a request goes out.
    monkeypatch.setattr("connector.origin._idle_connection_alive", lambda stream: True)
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        assert (await run_exchange(dispatcher.serve_stream, http_head("/bye"))).status == 200
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert view.status == 200
    assert server.accepted == 2
    assert [path for _method, path, _headers in server.requests] == ["/bye", "/hello"]


async def test_a_repeated_request_is_encoded_once_and_a_body_still_gets_its_framing(
        origin: tuple[H11Origin, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from connector import origin as origin_module
    server, port = origin
    encoded: list[bytes] = []
    real = origin_module.encode_request_head

    def counting(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        encoded.append(target)
        return real(method, target, headers)

    monkeypatch.setattr(origin_module, "encode_request_head", counting)
    # Received heads carry their pairs as tuples (tunnel.protocol.header_table).
    head = {**http_head("/sha256", method="POST"), "headers": [("Accept", "*/*")]}
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        views = [await run_exchange(dispatcher.serve_stream, dict(head), ended=True)
                 for _ in range(2)]
        with_body = await run_exchange(dispatcher.serve_stream, dict(head), [b"abc"])
    assert [json.loads(v.body)["size"] for v in views] == [0, 0]
    assert json.loads(with_body.body) == {"sha256": hashlib.sha256(b"abc").hexdigest(),
                                          "size": 3}
    assert server.requests[-1][2].get("transfer-encoding") == "chunked"
    assert "transfer-encoding" not in server.requests[0][2]
    assert encoded == [b"/sha256", b"/sha256"]  # the first head, then its chunked variant
