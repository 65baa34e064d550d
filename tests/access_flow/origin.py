"""The origin behind Access in these tests: it sees headers the way a WSGI application does and
checks the edge's assertion itself, with an independent verifier.

Headers are folded into a WSGI-style environ (``HTTP_`` + upper case, ``-`` and ``_`` both
``_``, duplicates joined with ``,``), because that folding is what makes underscore spellings of
identity headers dangerous: whatever the client managed to smuggle past the edge shows up in
the environ next to (or instead of) what the edge injected.

The assertion in ``Cf-Access-Jwt-Assertion`` is verified with PyJWT's ``PyJWKClient`` against
the edge's ``certs`` endpoint (RS256/ES256 only, audience and issuer checked), as an origin
that trusts nobody but the published keys would.

    any path   JSON {"method", "target", "environ", "assertion": {"claims"} or {"error"}}
    /ws        WebSocket echo
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import h11
import jwt
import trio
from wsproto import ConnectionType
from wsproto.connection import Connection as WebSocketConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

CHUNK = 65536
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


def wsgi_environ(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers as a WSGI server hands them to an application."""
    environ: dict[str, str] = {}
    for name, value in headers:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


@dataclass
class AssertionChecker:
    """Verifies assertions against the edge's published keys, like an origin would."""

    certs_url: str
    issuer: str
    audiences: dict[str, str] = field(default_factory=dict)  # host -> expected AUD
    _client: jwt.PyJWKClient | None = None

    def check(self, token: str, host: str) -> dict[str, Any]:
        if self._client is None:
            self._client = jwt.PyJWKClient(self.certs_url, cache_keys=True)
        key = self._client.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=self.audiences.get(host, "no audience configured"),
            issuer=self.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        return claims


class AccessOrigin:
    """One origin process stand-in, served in the test's trio run."""

    def __init__(self, checker: AssertionChecker) -> None:
        self.checker = checker
        self.requests: list[dict[str, Any]] = []

    async def verify(self, token: str, host: str) -> dict[str, Any]:
        try:
            claims = await trio.to_thread.run_sync(self.checker.check, token, host)
        except jwt.PyJWTError as error:
            return {"error": type(error).__name__}
        return {"claims": claims}

    async def describe(self, request: h11.Request) -> dict[str, Any]:
        headers = list(request.headers)
        environ = wsgi_environ(headers)
        host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
        assertion = environ.get("HTTP_CF_ACCESS_JWT_ASSERTION")
        seen: dict[str, Any] = {
            "method": request.method.decode(),
            "target": request.target.decode("latin-1"),
            "environ": environ,
            "assertion": None if assertion is None else await self.verify(assertion, host),
        }
        self.requests.append(seen)
        return seen

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                await self._serve(stream, h11.Connection(h11.SERVER))
            except IO_ERRORS:
                pass

    async def _next(self, stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(CHUNK))

    async def _serve(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        while True:
            request = await self._next(stream, conn)
            if type(request) is not h11.Request:
                return
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in request.headers}
            if request.target == b"/ws" and headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(stream, conn, headers)
                return
            while type(await self._next(stream, conn)) is h11.Data:
                pass
            body = json.dumps(await self.describe(request)).encode()
            data = conn.send(h11.Response(status_code=200, headers=[
                ("content-length", str(len(body))), ("content-type", "application/json"),
            ]))
            data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _websocket(
        self, stream: trio.abc.Stream, conn: h11.Connection, headers: Mapping[str, str]
    ) -> None:
        key = headers.get("sec-websocket-key", "").encode("latin-1")
        accept = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest()).decode()
        await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("upgrade", "websocket"), ("connection", "Upgrade"),
            ("sec-websocket-accept", accept),
        ])))
        trailing, _closed = conn.trailing_data
        ws = WebSocketConnection(ConnectionType.SERVER, trailing_data=bytes(trailing))
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    await stream.send_all(ws.send(type(event)(
                        data=event.data, message_finished=event.message_finished)))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
            data = await stream.receive_some(CHUNK)
            if not data:
                return
            ws.receive_data(data)


async def serve_origin(
    origin: AccessOrigin, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on 127.0.0.1 with an OS-chosen port; ``started`` hands back "http://HOST:PORT"."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, origin.serve_connection, listeners))
        task_status.started(f"http://{host}:{port}")
