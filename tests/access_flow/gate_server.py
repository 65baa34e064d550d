"""A gate served alone: the Access runtime with an injected clock, its gate over a real loopback
HTTP connection, and no tunnel (a granted request is answered with the identity it would carry,
the assertion's key id and expiry, and the client address the policies saw)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
import trio

from edge.access.gate import AccessGate
from edge.access.runtime import AccessRuntime, AccessSettings
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)
from edge.store.access_records import parse_app_spec, parse_idp, parse_policy_list
from edge.store.sqlite import SqliteStore

from .harness import AUTH, PREFIX, OtpInbox, hidden_fields, location

START = 1_800_000_000.0
ALLOW_EVERYONE = [{"name": "all", "action": "allow", "include": [{"everyone": True}]}]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class GateServer:
    runtime: AccessRuntime
    gate: AccessGate
    clock: Clock
    port: int
    store: SqliteStore

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"


async def answer_with_identity(
    gate: AccessGate, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
) -> None:
    grant = await gate(request, body, respond)
    if grant is None:
        return
    assertion = request.header(b"cf-access-jwt-assertion") or b""
    kid = jwt.get_unverified_header(assertion.decode()).get("kid") if assertion else None
    token_exp = (
        jwt.decode(assertion.decode(), options={"verify_signature": False})["exp"]
        if assertion else None
    )
    data = json.dumps({"identity": grant.identity, "kid": kid, "token_exp": token_exp,
                       "client": request.client_ip}).encode()
    await respond.start(200, [(b"content-type", b"application/json"),
                              (b"content-length", str(len(data)).encode())])
    await respond.send(data)
    await respond.end()


@asynccontextmanager
async def serve_gate(
    nursery: trio.Nursery,
    folder: Path,
    policies: Sequence[dict[str, Any]] = ALLOW_EVERYONE,
    *,
    trusted_proxies: Sequence[str] = (),
) -> AsyncIterator[GateServer]:
    """App ``one`` on app1.localhost (one-time PIN, 1 h sessions) behind ``policies``."""
    store = SqliteStore(folder / "store.db")
    store.migrate()
    store.create_idp(parse_idp({"name": "pin", "type": "otp", "delivery": "log"}))
    store.create_app(parse_app_spec(
        {"name": "one", "domain": "app1.localhost", "idps": ["pin"], "session_duration": "1h"}
    ))
    store.set_policies("one", parse_policy_list(list(policies)))
    clock = Clock()
    runtime = await AccessRuntime.open(
        store, AccessSettings(auth_domain=AUTH, issuer_scheme="http"), state_dir=folder,
        clock=clock,
    )
    await nursery.start(runtime.run)
    gate = AccessGate(runtime)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    proxies = tuple(ipaddress.ip_network(net) for net in trusted_proxies)

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await serve_http_connection(
                stream, partial(answer_with_identity, gate), limits=HttpLimits(),
                client_ip="127.0.0.1", scheme="http", trusted_proxies=proxies,
            )

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    try:
        yield GateServer(runtime, gate, clock, port, store)
    finally:
        store.close()


async def start_pin_login(server: GateServer, visitor: httpx.AsyncClient) -> dict[str, str]:
    login = location(await visitor.get(server.url("app1.localhost", "/x")))
    return hidden_fields((await visitor.get(login)).text)


async def finish_pin_login(
    server: GateServer, visitor: httpx.AsyncClient, inbox: OtpInbox, form: dict[str, str],
    email: str = "ann@corp.com",
) -> httpx.Response:
    sent = await visitor.post(server.url(AUTH, f"{PREFIX}/otp/email"),
                              data={**form, "email": email})
    return await visitor.post(server.url(AUTH, f"{PREFIX}/otp/code"),
                              data={**hidden_fields(sent.text), "code": inbox.last})
