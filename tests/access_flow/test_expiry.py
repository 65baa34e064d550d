"""Everything that expires does, on an edge whose clock the test moves.

The Access runtime is opened with an injected clock and its gate served over a real loopback
HTTP connection (no tunnel: a granted request is answered with the identity it would carry),
so login states, hand-off codes, app sessions and key rotation can be aged without waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import jwt
import pytest
import trio

from edge.access.gate import AccessGate
from edge.access.keys_service import rotate_signing_keys
from edge.access.runtime import AccessRuntime, AccessSettings
from edge.admin.api import ChangeEvent, ChangeKind
from edge.http11 import (
    HttpLimits,
    IncomingRequest,
    RequestBody,
    ResponseWriter,
    serve_http_connection,
)
from edge.store.access_records import parse_app_spec, parse_idp, parse_policy_list
from edge.store.sqlite import SqliteStore

from .harness import (
    AUTH,
    PREFIX,
    OtpInbox,
    follow,
    hidden_fields,
    location,
    new_visitor,
)

pytestmark = pytest.mark.e2e

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class GateServer:
    runtime: AccessRuntime
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
    data = json.dumps({"identity": grant.identity, "kid": kid, "token_exp": token_exp}).encode()
    await respond.start(200, [(b"content-type", b"application/json"),
                              (b"content-length", str(len(data)).encode())])
    await respond.send(data)
    await respond.end()


@pytest.fixture
async def gated(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[GateServer]:
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    store.create_idp(parse_idp({"name": "pin", "type": "otp", "delivery": "log"}))
    store.create_app(parse_app_spec(
        {"name": "one", "domain": "app1.localhost", "idps": ["pin"], "session_duration": "1h"}
    ))
    store.set_policies("one", parse_policy_list(
        [{"name": "all", "action": "allow", "include": [{"everyone": True}]}]
    ))
    clock = Clock()
    runtime = await AccessRuntime.open(
        store, AccessSettings(auth_domain=AUTH, issuer_scheme="http"), state_dir=tmp_path,
        clock=clock,
    )
    await nursery.start(runtime.run)
    gate = AccessGate(runtime)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await serve_http_connection(
                stream, partial(answer_with_identity, gate), limits=HttpLimits(),
                client_ip="127.0.0.1", scheme="http", trusted_proxies=(),
            )

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    yield GateServer(runtime, clock, port, store)
    store.close()


async def start_pin_login(server: GateServer, visitor: httpx.AsyncClient) -> dict[str, str]:
    login = location(await visitor.get(server.url("app1.localhost", "/x")))
    return hidden_fields((await visitor.get(login)).text)


async def finish_pin_login(
    server: GateServer, visitor: httpx.AsyncClient, inbox: OtpInbox, form: dict[str, str]
) -> httpx.Response:
    sent = await visitor.post(server.url(AUTH, f"{PREFIX}/otp/email"),
                              data={**form, "email": "ann@corp.com"})
    return await visitor.post(server.url(AUTH, f"{PREFIX}/otp/code"),
                              data={**hidden_fields(sent.text), "code": inbox.last})


async def test_a_login_left_open_too_long_expires(gated: GateServer, inbox: OtpInbox) -> None:
    async with new_visitor() as visitor:
        form = await start_pin_login(gated, visitor)
        gated.clock.now += 601
        late = await finish_pin_login(gated, visitor, inbox, form)
        assert late.status_code in (400, 401, 403)
        assert "CF_AccessSession" not in late.headers.get("set-cookie", "")


async def test_hand_off_codes_expire_after_a_minute(gated: GateServer, inbox: OtpInbox) -> None:
    async with new_visitor() as visitor:
        form = await start_pin_login(gated, visitor)
        handoff = location(await finish_pin_login(gated, visitor, inbox, form))
        gated.clock.now += 61
        assert (await visitor.get(handoff)).status_code == 400


async def test_app_sessions_end_with_their_duration(gated: GateServer, inbox: OtpInbox) -> None:
    async with new_visitor() as visitor:
        form = await start_pin_login(gated, visitor)
        page = await follow(visitor, await finish_pin_login(gated, visitor, inbox, form))
        assert page.json()["identity"]["email"] == "ann@corp.com"
        # The head's identity is the person; the token's own times travel in the assertion.
        assert "exp" not in page.json()["identity"]
        assert page.json()["token_exp"] == int(START + 3600)
        gated.clock.now += 3599
        assert (await visitor.get(gated.url("app1.localhost", "/x"))).status_code == 200
        gated.clock.now += 2
        expired = await visitor.get(gated.url("app1.localhost", "/x"))
        assert expired.status_code == 302
        # The auth-domain session (24 h) is still there: a new app session without a login.
        handoff = location(await visitor.get(location(expired)))
        assert f"{PREFIX}/authorized" in handoff


async def test_tokens_survive_a_key_rotation_and_new_ones_use_the_new_key(
    gated: GateServer, inbox: OtpInbox
) -> None:
    async with new_visitor() as visitor:
        form = await start_pin_login(gated, visitor)
        page = await follow(visitor, await finish_pin_login(gated, visitor, inbox, form))
        old_kid = gated.runtime.keys.current.active.kid
        gated.clock.now += 60
        await trio.to_thread.run_sync(
            lambda: rotate_signing_keys(gated.store, now=gated.clock.now)
        )
        await gated.runtime.on_change(ChangeEvent(ChangeKind.KEYS_ROTATED))
        new_kid = gated.runtime.keys.current.active.kid
        assert new_kid != old_kid
        again = await visitor.get(gated.url("app1.localhost", "/x"))
        assert again.status_code == 200  # the old cookie still opens: its key is published
        assert page.json()["kid"] == old_kid
        assert again.json()["kid"] == new_kid  # what the origin gets is signed anew
        certs = (await visitor.get(gated.url("app1.localhost", f"{PREFIX}/certs"))).json()
        assert {key["kid"] for key in certs["keys"]} == {old_kid, new_kid}
