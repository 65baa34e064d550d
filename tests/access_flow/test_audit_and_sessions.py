"""The audit trail, session fixation, cookie scope, and sessions surviving an edge restart."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from edge.access.runtime import SEALING_KEY_FILE

from .conftest import PinDeployment
from .harness import (
    AUTH,
    PREFIX,
    location,
    new_visitor,
    otp_inbox,
    raw_get,
    start_stack,
)

pytestmark = pytest.mark.e2e


async def test_every_decision_is_stored_and_logged_as_json(
    pin: PinDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    stack = pin.stack
    caplog.set_level(logging.INFO, logger="tunnelgate.audit")
    async with new_visitor() as visitor:
        await stack.otp_login(visitor, pin.inbox, stack.url("app1.localhost"), "rita@corp.com")
        await visitor.get(stack.url("app1.localhost", "/again"))
    async with new_visitor() as stranger:
        await stack.otp_login(stranger, pin.inbox, stack.url("app1.localhost"), "x@other.org")
    await stack.access.audit.drained()
    store = stack.edge.state.store
    events = await trio.to_thread.run_sync(lambda: store.audit_events(50, app="one"))
    decisions = [e.detail for e in events if e.kind == "access.decision"]
    actions = [(d["action"], d["reason"], d["email"]) for d in reversed(decisions)]
    assert ("authenticate", "not_authenticated", None) in actions
    assert ("allow", "allowed_by_policy", "rita@corp.com") in actions
    assert ("deny", "no_policy_matched", "x@other.org") in actions
    assert all(d["client_ip"] == "127.0.0.1" for d in decisions)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tunnelgate.audit"]
    assert {"app", "email", "client_ip", "action", "policy", "reason", "time"} <= set(lines[0])
    assert any(line["policy"] == "corp" and line["path"] == "/again" for line in lines)
    assert len(lines) == len(decisions)
    # The same decisions are counted in the edge's metrics, one per request.
    counted = {
        (sample.labels["decision"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(stack.edge.metrics.exposition().decode())
        if family.name == "tunnelgate_edge_auth_decisions"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert counted[("allow", "allowed_by_policy")] >= 2
    assert counted[("deny", "no_policy_matched")] >= 1
    assert counted[("authenticate", "not_authenticated")] >= 2
    assert sum(counted.values()) == sum(d.get("count", 1) for d in decisions)


async def test_a_planted_session_cookie_is_ignored_and_login_makes_a_new_session(
    pin: PinDeployment,
) -> None:
    stack = pin.stack
    async with new_visitor() as attacker:
        # What an attacker can get before anybody logs in: a login-state cookie of their own.
        await attacker.get(location(await attacker.get(stack.url("app1.localhost"))))
        planted = attacker.cookies.get("CF_AccessLogin", domain=AUTH)
        assert planted
    async with new_visitor() as victim:
        for name in ("CF_AccessSession", "CF_AccessLogin"):
            victim.cookies.set(name, planted, domain=AUTH, path="/" if "Session" in name
                               else PREFIX)
        page = await stack.otp_login(victim, pin.inbox, stack.url("app1.localhost"),
                                     "rita@corp.com")
        assert page.status_code == 200
        session_values = [c.value for c in victim.cookies.jar if c.name == "CF_AccessSession"]
        nonce = page.json()["assertion"]["claims"]["identity_nonce"]
    assert planted not in session_values
    async with new_visitor() as attacker:
        attacker.cookies.set("CF_AccessSession", planted, domain=AUTH)
        who = await attacker.get(stack.url(AUTH, f"{PREFIX}/get-identity"))
        assert who.status_code == 401
    # Another login for the same person is another session, never the same id.
    async with new_visitor() as again:
        second = await stack.otp_login(again, pin.inbox, stack.url("app1.localhost"),
                                       "rita@corp.com")
        assert second.json()["assertion"]["claims"]["identity_nonce"] != nonce


async def test_app_cookies_are_host_only_and_bound_to_their_app(pin: PinDeployment) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        await stack.otp_login(visitor, pin.inbox, stack.url("app1.localhost"), "rita@corp.com")
        cookie = next(c for c in visitor.cookies.jar if c.name == "CF_Authorization")
    assert cookie.domain == "app1.localhost"
    assert not cookie.domain_specified  # no Domain attribute: host-only
    assert cookie.path == "/"
    assert cookie.has_nonstandard_attr("HttpOnly")
    token = cookie.value or ""
    # A sibling subdomain can plant a same-named cookie; it is skipped, the real one wins.
    status, body = await raw_get(stack, "app1.localhost", "/", [
        ("Cookie", f"CF_Authorization=planted-by-sibling; CF_Authorization={token}"),
    ])
    assert status == 200
    assert json.loads(body)["assertion"]["claims"]["email"] == "rita@corp.com"
    # The same token sent to another app's host opens nothing there.
    await stack.add_app(
        {"name": "two", "domain": "app2.localhost", "idps": ["pin"]},
        [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    status, _ = await raw_get(
        stack, "app2.localhost", "/", [("Cookie", f"CF_Authorization={token}")]
    )
    assert status == 302


async def test_sessions_survive_a_restart_without_a_new_provider_login(tmp_path: Path) -> None:
    folder = tmp_path / "edge"
    with otp_inbox() as codes:
        async with trio.open_nursery() as nursery:
            stack = await start_stack(nursery, folder, ["app1.localhost"])
            await stack.add_idp({"name": "pin", "type": "otp", "delivery": "log"})
            await stack.add_app(
                {"name": "one", "domain": "app1.localhost", "idps": ["pin"]},
                [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
            )
            visitor = new_visitor()
            page = await stack.otp_login(visitor, codes, stack.url("app1.localhost"),
                                         "rita@corp.com")
            assert page.status_code == 200
            session_cookie = visitor.cookies.get("CF_AccessSession", domain=AUTH)
            app_cookie = visitor.cookies.get("CF_Authorization", domain="app1.localhost")
            await visitor.aclose()
            with trio.fail_after(10):
                await stack.access.sessions_stored()
            nursery.cancel_scope.cancel()
        mode = stat.S_IMODE((folder / SEALING_KEY_FILE).stat().st_mode)
        assert mode == 0o600
        async with trio.open_nursery() as nursery:
            stack = await start_stack(nursery, folder, ["app1.localhost"])
            app = stack.edge.state.store.get_app("one")
            stack.origin.checker.audiences[app.host] = app.aud
            async with new_visitor() as returning:
                returning.cookies.set("CF_AccessSession", session_cookie or "", domain=AUTH)
                returning.cookies.set("CF_Authorization", app_cookie or "",
                                      domain="app1.localhost")
                # The app token is still signed by a stored key and names a restored session,
                # so the restarted edge takes it as it is: no round trip, no provider login.
                page = await returning.get(stack.url("app1.localhost"))
                assert page.status_code == 200
                assert page.json()["assertion"]["claims"]["email"] == "rita@corp.com"
            nursery.cancel_scope.cancel()
