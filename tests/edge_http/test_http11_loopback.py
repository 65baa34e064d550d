"""A real client over loopback sockets: httpx against serve_http_connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)

from .wire import HandlerFn


@asynccontextmanager
async def loopback_server(
    handler: HandlerFn, limits: HttpLimits | None = None
) -> AsyncIterator[tuple[str, list[str]]]:
    """Serve on 127.0.0.1 port 0; yield the base URL and the peers of accepted connections."""
    peers: list[str] = []

    async def on_connection(stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[0]
        peers.append(peer)
        await serve_http_connection(
            stream,
            handler,
            limits=limits or HttpLimits(),
            client_ip=peer,
            scheme="http",
            trusted_proxies=(),
        )

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        yield f"http://127.0.0.1:{port}", peers
        nursery.cancel_scope.cancel()


async def echo(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
    total = 0
    pieces = 0
    while chunk := await body.receive_some():
        total += len(chunk)
        pieces += 1
    payload = f"{request.method} {request.target} {total} {pieces} {request.client_ip}".encode()
    await respond.start(200, [(b"content-type", b"text/plain")])
    await respond.send(payload)
    await respond.end()


async def test_httpx_reuses_one_kept_alive_connection() -> None:
    async with loopback_server(echo) as (url, peers), httpx.AsyncClient(base_url=url) as client:
        texts = [(await client.get(f"/n/{i}?q={i}")).text for i in range(3)]
    assert texts == [f"GET /n/{i}?q={i} 0 0 127.0.0.1" for i in range(3)]
    assert peers == ["127.0.0.1"]


async def test_httpx_streams_a_chunked_upload_and_a_chunked_download() -> None:
    async def upload() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"u" * 65536

    async def download(
        request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        received = 0
        while chunk := await body.receive_some():
            received += len(chunk)
        await respond.start(200, [])
        for _ in range(received // 65536):
            await respond.send(b"d" * 65536)
        await respond.end()

    async with loopback_server(download) as (url, _), httpx.AsyncClient(base_url=url) as client:
        async with client.stream("POST", "/up", content=upload()) as response:
            assert response.headers["transfer-encoding"] == "chunked"
            size = 0
            async for part in response.aiter_bytes():
                size += len(part)
    assert size == 64 * 65536


async def test_httpx_sees_json_error_pages_and_413() -> None:
    async def refuse(request: IncomingRequest, body: RequestBody, respond: ResponseWriter) -> None:
        while await body.receive_some():
            pass
        await respond.error(403, "Forbidden", "Not for you.")

    limits = HttpLimits(max_body_bytes=1000)
    async with (
        loopback_server(refuse, limits) as (url, _),
        httpx.AsyncClient(base_url=url) as client,
    ):
        denied = await client.get("/", headers={"Accept": "application/json"})
        too_big = await client.post("/", content=b"x" * 1001)
    assert denied.status_code == 403
    assert denied.json()["error"] == "forbidden"
    assert denied.json()["message"] == "Not for you."
    assert denied.json()["request_id"] == denied.headers["x-request-id"]
    assert too_big.status_code == 413
    assert "Request too large" in too_big.text
