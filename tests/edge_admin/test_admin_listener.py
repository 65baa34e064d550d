"""The admin HTTP/1.1 listener: a real loopback round trip, then limits and timeouts over
in-memory streams with a virtual clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import h11
import httpx
import pytest
import trio
import trio.testing

from edge.admin import AdminApi, AdminServerLimits, serve_admin
from tunnel.auth import decode_run_token

from .conftest import EDGE_URL, FakeEdge, MemoryListener

LIMITS = AdminServerLimits(
    max_header_bytes=4096,
    max_headers=20,
    header_timeout=5.0,
    idle_timeout=30.0,
    max_body_bytes=1000,
)


async def test_round_trip_over_loopback_with_httpx(
    api: AdminApi, admin_token: str, fake_edge: FakeEdge
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_admin, listeners[0], api)
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as http:
            created = await http.post("/v1/tunnels", json={"name": "home"})
            assert created.status_code == 201
            assert created.headers["content-type"] == "application/json"
            token = decode_run_token(created.json()["token"])
            assert token.edge_url == EDGE_URL
            routed = await http.post("/v1/tunnels/home/routes", json={"hostname": "a.example.com"})
            assert routed.status_code == 201
            listed = await http.get("/v1/tunnels")
            assert listed.json()["tunnels"][0]["routes"] == ["a.example.com"]
            deleted = await http.delete("/v1/routes/a.example.com")
            assert deleted.status_code == 204
            assert deleted.content == b""
            unauthorized = await http.get("/v1/tunnels", headers={"Authorization": "Bearer no"})
            assert unauthorized.status_code == 401
            assert unauthorized.json()["error"] == "unauthorized"
            spec = await http.get("/v1/openapi.json", headers={"Authorization": ""})
            assert spec.status_code == 200
            assert spec.json()["openapi"].startswith("3.1")
        nursery.cancel_scope.cancel()
    assert [e.kind for e in fake_edge.events] == ["tunnel_created", "route_added", "route_deleted"]


@pytest.fixture
async def memory_server(api: AdminApi) -> AsyncIterator[MemoryListener]:
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_admin, listener, api, limits=LIMITS))
        yield listener
        nursery.cancel_scope.cancel()


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


def json_body(raw: bytes) -> dict[str, object]:
    _head, _, body = raw.partition(b"\r\n\r\n")
    parsed: dict[str, object] = json.loads(body)
    return parsed


class H11Client:
    """Speaks HTTP/1.1 over one stream so keep-alive behaviour can be observed."""

    def __init__(self, stream: trio.abc.Stream, token: str) -> None:
        self.stream = stream
        self.token = token
        self.conn = h11.Connection(h11.CLIENT)

    def request_bytes(self, method: str, target: str, body: bytes = b"") -> bytes:
        headers = [
            ("host", "admin"),
            ("authorization", f"Bearer {self.token}"),
            ("content-length", str(len(body))),
        ]
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        return out + (self.conn.send(h11.EndOfMessage()) or b"")

    async def response(self) -> tuple[int, bytes]:
        status = 0
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status, body
            else:
                raise AssertionError(f"unexpected {event!r}")


async def test_keep_alive_serves_several_requests_on_one_connection(
    memory_server: MemoryListener, admin_token: str
) -> None:
    stream = await memory_server.connect()
    client = H11Client(stream, admin_token)
    await stream.send_all(client.request_bytes("POST", "/v1/tunnels", b'{"name": "home"}'))
    assert (await client.response())[0] == 201
    await stream.send_all(client.request_bytes("GET", "/v1/tunnels/home"))
    status, body = await client.response()
    assert status == 200
    assert json.loads(body)["name"] == "home"
    await stream.aclose()


async def test_pipelined_requests_are_answered_in_order(
    memory_server: MemoryListener, admin_token: str
) -> None:
    stream = await memory_server.connect()
    auth = f"authorization: Bearer {admin_token}\r\n".encode()
    await stream.send_all(
        b"GET /v1/routes HTTP/1.1\r\nhost: a\r\n" + auth + b"\r\n"
        b"GET /v1/nowhere HTTP/1.1\r\nhost: a\r\n" + auth + b"\r\n"
    )
    raw = b""
    while b'"not_found"' not in raw:
        raw += await stream.receive_some(65536)
    first = raw.index(b"HTTP/1.1 200 ")
    second = raw.index(b"HTTP/1.1 404 ")
    assert first == 0 < second
    assert b'{"routes":[]}' in raw[:second]
    await stream.aclose()


async def test_garbage_gets_400_and_the_connection_closes(memory_server: MemoryListener) -> None:
    stream = await memory_server.connect()
    await stream.send_all(b"\x00\x01 nonsense\r\n\r\n")
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert json_body(raw)["error"] == "bad_request"
    assert b"connection: close" in raw.lower()


async def test_an_oversized_head_gets_431(memory_server: MemoryListener) -> None:
    stream = await memory_server.connect()
    await stream.send_all(b"GET /v1/routes HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 5000)
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 431 ")


async def test_too_many_headers_get_431(memory_server: MemoryListener) -> None:
    stream = await memory_server.connect()
    lines = b"".join(b"x-h%d: v\r\n" % index for index in range(25))
    await stream.send_all(b"GET /v1/routes HTTP/1.1\r\nhost: a\r\n" + lines + b"\r\n")
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert json_body(raw)["error"] == "too_many_headers"


async def test_chunked_bodies_get_411(memory_server: MemoryListener) -> None:
    stream = await memory_server.connect()
    await stream.send_all(
        b"POST /v1/tunnels HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 411 ")


async def test_a_declared_oversized_body_gets_413_before_it_is_read(
    memory_server: MemoryListener,
) -> None:
    stream = await memory_server.connect()
    await stream.send_all(b"POST /v1/tunnels HTTP/1.1\r\nhost: a\r\ncontent-length: 5000\r\n\r\n")
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert json_body(raw)["error"] == "payload_too_large"


async def test_expect_100_continue(memory_server: MemoryListener, admin_token: str) -> None:
    stream = await memory_server.connect()
    body = b'{"name": "home"}'
    await stream.send_all(
        b"POST /v1/tunnels HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
        + f"authorization: Bearer {admin_token}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    )
    interim = await stream.receive_some(65536)
    assert interim.startswith(b"HTTP/1.1 100 ")
    await stream.send_all(body)
    final = b""
    while b'"token"' not in final:
        final += await stream.receive_some(65536)
    assert final.startswith(b"HTTP/1.1 201 ")
    await stream.aclose()


async def test_a_slow_head_gets_408_at_the_header_timeout(
    memory_server: MemoryListener, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await memory_server.connect()
    await trio.sleep(10)  # idle before the head starts: allowed up to idle_timeout
    await stream.send_all(b"GET /v1/routes HTTP/1.1\r\nhost: a\r\n")
    started = trio.current_time()
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - started == pytest.approx(LIMITS.header_timeout)


async def test_an_idle_connection_is_closed_silently(
    memory_server: MemoryListener, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await memory_server.connect()
    started = trio.current_time()
    assert await read_to_end(stream) == b""
    assert trio.current_time() - started == pytest.approx(LIMITS.idle_timeout)


async def test_a_stalled_body_gets_408(
    memory_server: MemoryListener, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await memory_server.connect()
    await stream.send_all(b"POST /v1/tunnels HTTP/1.1\r\nhost: a\r\ncontent-length: 50\r\n\r\n{")
    raw = await read_to_end(stream)
    assert raw.startswith(b"HTTP/1.1 408 ")


async def test_a_client_that_leaves_mid_request_does_not_break_the_server(
    memory_server: MemoryListener, admin_token: str
) -> None:
    stream = await memory_server.connect()
    await stream.send_all(b"POST /v1/tunnels HTTP/1.1\r\nhost: a\r\ncontent-length: 50\r\n\r\n{")
    await stream.aclose()
    again = await memory_server.connect()
    client = H11Client(again, admin_token)
    await again.send_all(client.request_bytes("GET", "/v1/routes"))
    assert await client.response() == (200, b'{"routes":[]}')
    await again.aclose()


async def test_head_requests_get_headers_only_and_the_connection_stays_usable(
    memory_server: MemoryListener, admin_token: str
) -> None:
    stream = await memory_server.connect()
    client = H11Client(stream, admin_token)
    await stream.send_all(client.request_bytes("HEAD", "/v1/routes"))
    assert await client.response() == (405, b"")
    await stream.send_all(client.request_bytes("GET", "/v1/routes"))
    assert await client.response() == (200, b'{"routes":[]}')
    await stream.aclose()
