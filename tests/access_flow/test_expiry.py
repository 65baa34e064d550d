"""Everything that expires does, on an edge whose clock the test moves.

The Access runtime is opened with an injected clock and its gate served over a real loopback
HTTP connection (``gate_server``), so login states, hand-off codes, app sessions and key
rotation can be aged without waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from edge.access.keys_service import rotate_signing_keys
from edge.admin.api import ChangeEvent, ChangeKind

from .gate_server import START, GateServer, finish_pin_login, serve_gate, start_pin_login
from .harness import PREFIX, OtpInbox, follow, location, new_visitor

pytestmark = pytest.mark.e2e


@pytest.fixture
async def gated(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[GateServer]:
    async with serve_gate(nursery, tmp_path) as server:
        yield server


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
