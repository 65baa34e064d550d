"""OAuth state, CSRF and PKCE at the real callback, and the one-time hand-off codes."""

from __future__ import annotations

import httpx
import pytest
from idp.fixture import sign_in_at_provider_async

from .conftest import Corp
from .harness import AUTH, PREFIX, follow, location, new_visitor, query_of

pytestmark = pytest.mark.e2e


async def start_login(corp: Corp, visitor: httpx.AsyncClient) -> str:
    """Up to the provider's authorization URL (the login-state cookie is now set)."""
    login = location(await visitor.get(corp.stack.url("app1.localhost", "/x")))
    return location(await visitor.get(login))


async def provider_callback(corp: Corp, visitor: httpx.AsyncClient, provider_url: str) -> str:
    url = await sign_in_at_provider_async(
        visitor, provider_url, login="alice", redirect_uri=corp.callback
    )
    return str(url)


def with_params(url: str, **params: str | None) -> str:
    merged = {**query_of(url), **params}
    return str(httpx.URL(url).copy_with(params={k: v for k, v in merged.items() if v is not None}))


async def test_missing_or_mismatched_state_is_refused(corp: Corp) -> None:
    async with new_visitor() as visitor:
        callback = await provider_callback(corp, visitor, await start_login(corp, visitor))
        missing = await visitor.get(with_params(callback, state=None))
        assert missing.status_code == 400
        # The failed attempt used the login up: even the right state no longer works.
        late = await visitor.get(callback)
        assert late.status_code == 400
    async with new_visitor() as visitor:
        callback = await provider_callback(corp, visitor, await start_login(corp, visitor))
        mismatched = await visitor.get(with_params(callback, state="x" * 43))
        assert mismatched.status_code == 400
        assert "CF_AccessSession" not in mismatched.headers.get("set-cookie", "")


async def test_a_callback_from_another_browser_is_refused(corp: Corp) -> None:
    async with new_visitor() as victim, new_visitor() as attacker:
        callback = await provider_callback(corp, victim, await start_login(corp, victim))
        # Login CSRF: the attacker's browser (no login-state cookie) cannot use it ...
        stolen = await attacker.get(callback)
        assert stolen.status_code == 400
        # ... and the victim's own browser still can.
        handoff = await victim.get(callback)
        assert handoff.status_code == 302


async def test_state_is_single_use(corp: Corp) -> None:
    async with new_visitor() as visitor:
        provider_url = await start_login(corp, visitor)
        login_cookie = visitor.cookies.get("CF_AccessLogin", domain=AUTH)
        callback = await provider_callback(corp, visitor, provider_url)
        assert (await visitor.get(callback)).status_code == 302
        visitor.cookies.set("CF_AccessLogin", login_cookie or "", domain=AUTH, path=PREFIX)
        replay = await visitor.get(callback)
        assert replay.status_code == 400


async def test_an_authorization_code_works_once(corp: Corp) -> None:
    async with new_visitor() as visitor, new_visitor() as other:
        first = await provider_callback(corp, visitor, await start_login(corp, visitor))
        assert (await visitor.get(first)).status_code == 302
        # A fresh login with the old code: the provider refuses it (it was redeemed, and it
        # belongs to another PKCE verifier).
        second_provider_url = await start_login(corp, other)
        reused = with_params(first, state=query_of(second_provider_url)["state"])
        answer = await other.get(reused)
        assert answer.status_code == 400
        assert "CF_AccessSession" not in answer.headers.get("set-cookie", "")


async def test_the_provider_is_always_asked_for_pkce_s256(corp: Corp) -> None:
    async with new_visitor() as visitor:
        urls = [await start_login(corp, visitor) for _ in range(3)]
    challenges = {query_of(url)["code_challenge"] for url in urls}
    states = {query_of(url)["state"] for url in urls}
    assert all(query_of(url)["code_challenge_method"] == "S256" for url in urls)
    assert len(challenges) == 3
    assert len(states) == 3


async def test_hand_off_codes_are_single_use_and_bound_to_their_app(corp: Corp) -> None:
    stack = corp.stack
    async with new_visitor() as visitor:
        response = await corp.sign_in(visitor, stack.url("app1.localhost", "/x"), "alice")
        handoff = location(response)
        assert (await visitor.get(handoff)).status_code == 302
        assert (await visitor.get(handoff)).status_code == 400
        # A fresh code for app1, carried to app2 (with app2's AUD or app1's): refused.
        login = location(await visitor.get(stack.url("app3.localhost")))  # app3: alice is admin
        code3 = query_of(location(await visitor.get(login)))["code"]
        for aud in (corp.app3.aud, corp.app2.aud):
            on_app2 = stack.url("app2.localhost", f"{PREFIX}/authorized")
            refused = await visitor.get(on_app2, params={"app": aud, "code": code3})
            assert refused.status_code == 400
        tampered = await visitor.get(stack.url("app1.localhost", f"{PREFIX}/authorized"),
                                     params={"app": corp.app1.aud, "code": code3[:-4] + "AAAA"})
        assert tampered.status_code == 400
        # The session itself is fine: a proper round trip to app2 works.
        page = await follow(visitor, await visitor.get(stack.url("app2.localhost")))
        assert page.status_code == 200
