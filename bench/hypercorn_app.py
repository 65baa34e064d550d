"""The hypercorn-trio reference: a bare ASGI app that answers `/small` as the nginx origin does.

One of tunnelgate's targets is stated against "hypercorn with a trio worker serving the 100-byte
body directly": a typical Python ASGI server with nothing in front of it. This app is that
baseline. `GET /small` gets the very body nginx's `return 200` sends (imported from origin.py, so
the two cannot drift apart) with `Content-Type: text/plain` and `Content-Length: 100`; hypercorn
adds `date` and `server` as nginx does. Anything else gets a 404. The headers and bodies are
built once at import, so the rows measure the server, not the app.

Started by targets.py (`HypercornTrio`) from this directory as
`hypercorn --worker-class trio --workers 1 --bind 127.0.0.1:PORT ... hypercorn_app:app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from origin import SMALL_BODY

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = SMALL_BODY.encode()
NOT_FOUND_BODY = b"not found\n"


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]


OK_HEADERS = _headers(BODY)
NOT_FOUND_HEADERS = _headers(NOT_FOUND_BODY)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge start-up and shutdown, so hypercorn logs no lifespan error at start."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return  # a WebSocket upgrade: returning without accepting makes hypercorn refuse it
    if scope["method"] == "GET" and scope["path"] == "/small":
        status, headers, body = 200, OK_HEADERS, BODY
    else:
        status, headers, body = 404, NOT_FOUND_HEADERS, NOT_FOUND_BODY
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
