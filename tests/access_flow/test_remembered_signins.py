"""A checked sign-in is reused by the next requests with the same cookie (edge.access.gate), but
never past anything it rests on: every revocation, logout, policy change, key rotation and
expiry takes effect on the very next request, and the policy still decides every request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from edge.access.gate import SIGNIN_MEMORY_SECONDS
from edge.access.keys_service import rotate_signing_keys
from edge.access.sessions import GlobalSession
from edge.admin.api import ChangeEvent, ChangeKind
from edge.store.access_records import parse_policy_list

from .gate_server import ALLOW_EVERYONE, GateServer, finish_pin_login, serve_gate, start_pin_login
from .harness import OtpInbox, follow, new_visitor

pytestmark = pytest.mark.e2e

BLOCKED_NETWORK = {"name": "blocked", "action": "block", "include": [{"ip": "192.0.2.0/24"}]}


@pytest.fixture
async def gated(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[GateServer]:
    async with serve_gate(nursery, tmp_path, [BLOCKED_NETWORK, *ALLOW_EVERYONE],
                          trusted_proxies=["127.0.0.1/32"]) as server:
        yield server


async def signed_in(gated: GateServer, inbox: OtpInbox, visitor: httpx.AsyncClient) -> None:
    form = await start_pin_login(gated, visitor)
    page = await follow(visitor, await finish_pin_login(gated, visitor, inbox, form))
    assert page.status_code == 200


def count_session_lookups(gated: GateServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    sessions = gated.runtime.sessions
    original = sessions.get_by_nonce

    def counting(nonce: str) -> GlobalSession | None:
        calls.append(nonce)
        return original(nonce)

    monkeypatch.setattr(sessions, "get_by_nonce", counting)
    return calls


async def test_a_sign_in_is_checked_once_and_reused_for_a_second_at_most(
    gated: GateServer, inbox: OtpInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with new_visitor() as visitor:
        await signed_in(gated, inbox, visitor)
        lookups = count_session_lookups(gated, monkeypatch)
        for path in ("/a", "/b", "/c"):
            assert (await visitor.get(gated.url("app1.localhost", path))).status_code == 200
        assert lookups == []  # the sign-in the login's own request checked
        gated.clock.now += SIGNIN_MEMORY_SECONDS
        assert (await visitor.get(gated.url("app1.localhost", "/d"))).status_code == 200
        assert len(lookups) == 1
        assert (await visitor.get(gated.url("app1.localhost", "/e"))).status_code == 200
        assert len(lookups) == 1


async def test_the_policy_still_decides_every_request(
    gated: GateServer, inbox: OtpInbox
) -> None:
    async with new_visitor() as visitor:
        await signed_in(gated, inbox, visitor)
        url = gated.url("app1.localhost", "/x")
        blocked = {"X-Forwarded-For": "192.0.2.7", "Accept": "application/json"}
        for _ in range(2):
            denied = await visitor.get(url, headers=blocked)
            assert denied.status_code == 403
            assert denied.json()["reason"] == "blocked_by_policy"
            allowed = await visitor.get(url)
            assert allowed.status_code == 200
            assert allowed.json()["client"] == "127.0.0.1"


async def revoke_by_email(gated: GateServer) -> None:
    await gated.runtime.on_change(ChangeEvent(ChangeKind.SESSIONS_REVOKED, email="ann@corp.com"))


async def revoke_the_app(gated: GateServer) -> None:
    (aud,) = [app.aud for app in gated.runtime.catalog.apps if app.name == "one"]
    await gated.runtime.on_change(ChangeEvent(ChangeKind.SESSIONS_REVOKED, aud=aud))


async def log_out(gated: GateServer) -> None:
    session = next(iter(gated.runtime.sessions.export_state()["sessions"]))
    live = gated.runtime.sessions.get(session["id"])
    assert live is not None
    gated.runtime.end_session(live)


async def block_everyone(gated: GateServer) -> None:
    policies = [{"name": "none", "action": "block", "include": [{"everyone": True}]}]
    await trio.to_thread.run_sync(gated.store.set_policies, "one", parse_policy_list(policies))
    await gated.runtime.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name="one"))


@pytest.mark.parametrize(
    ("change", "refused_with"),
    [(revoke_by_email, 302), (revoke_the_app, 302), (log_out, 302), (block_everyone, 403)],
)
async def test_a_change_takes_effect_on_the_very_next_request(
    gated: GateServer,
    inbox: OtpInbox,
    change: Callable[[GateServer], Awaitable[None]],
    refused_with: int,
) -> None:
    async with new_visitor() as visitor:
        await signed_in(gated, inbox, visitor)
        url = gated.url("app1.localhost", "/x")
        assert (await visitor.get(url)).status_code == 200
        await change(gated)
        assert (await visitor.get(url)).status_code == refused_with  # the clock did not move


async def test_an_app_session_ending_within_the_second_ends_the_reuse(
    gated: GateServer, inbox: OtpInbox
) -> None:
    async with new_visitor() as visitor:
        await signed_in(gated, inbox, visitor)
        gated.clock.now += 3600 - SIGNIN_MEMORY_SECONDS / 2  # half a second before the end
        url = gated.url("app1.localhost", "/x")
        assert (await visitor.get(url)).status_code == 200
        gated.clock.now += SIGNIN_MEMORY_SECONDS / 2
        assert (await visitor.get(url)).status_code == 302


async def test_a_key_rotation_reaches_the_next_request(
    gated: GateServer, inbox: OtpInbox
) -> None:
    async with new_visitor() as visitor:
        await signed_in(gated, inbox, visitor)
        url = gated.url("app1.localhost", "/x")
        before: dict[str, Any] = (await visitor.get(url)).json()
        gated.clock.now += 60
        await trio.to_thread.run_sync(
            lambda: rotate_signing_keys(gated.store, now=gated.clock.now)
        )
        await gated.runtime.on_change(ChangeEvent(ChangeKind.KEYS_ROTATED))
        after: dict[str, Any] = (await visitor.get(url)).json()
        assert after["kid"] != before["kid"]
