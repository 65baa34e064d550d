"""A bypass for ``/public`` opens ``/public`` and nothing else, however the path is spelt.

``app1.localhost/public`` is an application whose only policy is a bypass; ``app1.localhost``
itself needs a login. Every trick below must either be refused (400), land on the login
(302), or be forwarded to the origin with exactly the canonical path that was matched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from .harness import Stack, raw_get, start_stack

pytestmark = pytest.mark.e2e

TRICKS = [
    "/public/../admin",
    "/public/./../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/admin?x=/public",
    "/admin;/public",
    "/admin/public",
    "/PUBLIC",
    "/Public/x",
    "/publicity",
    "/public..",
    "/public%2f..%2fadmin",
    "/public%2F..%2Fadmin",
    "/public%5c..%5cadmin",
    "/public\\..\\admin",
    "/%2fpublic",
    "/public%00",
    "/public%00/../admin",
    "/public/%252e%252e/admin",
    "/./admin",
    "/admin/../public/../admin",
    "/public%23/../admin",
]
OPEN = ["/public", "/public/", "/public/page?q=1", "/%70ublic/x", "//public", "/public//x"]


@pytest.fixture
async def bypass(nursery: trio.Nursery, tmp_path: Path) -> Stack:
    stack = await start_stack(nursery, tmp_path / "edge", ["app1.localhost"])
    await stack.add_idp({"name": "pin", "type": "otp", "delivery": "log"})
    await stack.add_app(
        {"name": "site", "domain": "app1.localhost", "idps": ["pin"]},
        [{"name": "staff", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    await stack.add_app(
        {"name": "public", "domain": "app1.localhost/public", "idps": ["pin"]},
        [{"name": "everyone", "action": "bypass", "include": [{"everyone": True}]}],
    )
    return stack


async def test_bypass_path_tricks_never_open_other_paths(bypass: Stack) -> None:
    outcomes = {}
    for target in TRICKS:
        status, body = await raw_get(bypass, "app1.localhost", target, [])
        outcomes[target] = status
        if status == 200:
            seen = json.loads(body)
            path = seen["target"].split("?", 1)[0]
            assert path == "/public" or path.startswith("/public/"), (target, seen["target"])
            assert seen["assertion"] is None
        else:
            assert status in (302, 400), (target, status, body[:200])
    assert outcomes["/public/../admin"] == 302
    assert outcomes["/admin?x=/public"] == 302
    assert outcomes["/public%2f..%2fadmin"] == 400


async def test_the_bypassed_path_reaches_the_origin_as_matched(bypass: Stack) -> None:
    for target in OPEN:
        status, body = await raw_get(bypass, "app1.localhost", target, [])
        assert status == 200, (target, body[:200])
        seen = json.loads(body)
        path = seen["target"].split("?", 1)[0]
        assert path == "/public" or path.startswith("/public/"), (target, seen["target"])
        assert seen["assertion"] is None
        assert "HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL" not in seen["environ"]
