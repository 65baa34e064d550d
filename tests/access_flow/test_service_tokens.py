"""Service tokens let machines through ``service_auth`` policies, and only those."""

from __future__ import annotations

import pytest
import trio

from edge.admin.api import ChangeEvent, ChangeKind

from .conftest import PinDeployment
from .harness import new_visitor

pytestmark = pytest.mark.e2e


async def make_token(pin: PinDeployment, name: str) -> tuple[str, str]:
    store = pin.stack.edge.state.store
    token, secret = await trio.to_thread.run_sync(
        lambda: store.create_service_token(name, duration=3600)
    )
    await pin.stack.access.on_change(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name=name))
    return token.client_id, secret


async def test_a_service_token_passes_its_policy_with_a_common_name(pin: PinDeployment) -> None:
    stack = pin.stack
    await stack.set_policies("one", [
        {"name": "ci", "action": "service_auth", "include": [{"service_token": "ci"}]},
        {"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]},
    ])
    client_id, secret = await make_token(pin, "ci")
    other_id, other_secret = await make_token(pin, "other")
    url = stack.url("app1.localhost", "/api")
    async with new_visitor() as machine:
        ok = await machine.get(url, headers={"CF-Access-Client-Id": client_id,
                                             "CF-Access-Client-Secret": secret})
        assert ok.status_code == 200
        seen = ok.json()
        assert seen["assertion"]["claims"]["common_name"] == "ci"
        assert "HTTP_CF_ACCESS_CLIENT_SECRET" not in seen["environ"]
        assert "HTTP_CF_ACCESS_CLIENT_ID" not in seen["environ"]
        assert "HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL" not in seen["environ"]

        wrong = await machine.get(url, headers={"CF-Access-Client-Id": client_id,
                                                "CF-Access-Client-Secret": secret[:-1] + "x"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "service_token_invalid"

        unlisted = await machine.get(url, headers={"CF-Access-Client-Id": other_id,
                                                   "CF-Access-Client-Secret": other_secret})
        assert unlisted.status_code == 403

        store = stack.edge.state.store
        await trio.to_thread.run_sync(store.delete_service_token, "ci")
        await stack.access.on_change(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name="ci"))
        gone = await machine.get(url, headers={"CF-Access-Client-Id": client_id,
                                               "CF-Access-Client-Secret": secret})
        assert gone.status_code == 401


async def test_a_service_token_never_passes_an_allow_policy(pin: PinDeployment) -> None:
    client_id, secret = await make_token(pin, "ci")
    async with new_visitor() as machine:
        answer = await machine.get(pin.stack.url("app1.localhost"),
                                   headers={"CF-Access-Client-Id": client_id,
                                            "CF-Access-Client-Secret": secret})
    assert answer.status_code == 403
    assert answer.json()["reason"] == "no_policy_matched"
