"""E-mail allow-lists after a real one-time PIN login: look-alike addresses never get in.

app1 allows ``email_domain = "corp.com"`` (exactly that domain); app2 allows ``".corp.com"``
(subdomains on a label boundary) plus an explicit list.
"""

from __future__ import annotations

import pytest

from .conftest import PinDeployment
from .harness import AUTH, PREFIX, follow, hidden_fields, location, new_visitor

pytestmark = pytest.mark.e2e

CASES = [
    # address, app1 (corp.com), app2 (.corp.com or the list)
    ("ann@corp.com", 200, 200),
    ("ANN@CORP.COM", 200, 200),
    ("ann@sub.corp.com", 403, 200),
    ("ann@corp.com.evil.com", 403, 403),
    ("ann@evilcorp.com", 403, 403),
    ("ann@xcorp.com", 403, 403),
    ("ann@corp.co", 403, 403),
    ("ann@evil.com@corp.com", 400, 400),
    ("ann@corp.com\n@evil.com", 400, 400),
    ("ann@c\u043erp.com", 403, 403),  # Cyrillic o: a different domain, in xn-- form
    ("listed@partner.org", 403, 200),
]


@pytest.mark.parametrize(("address", "on_app1", "on_app2"), CASES)
async def test_only_real_matches_get_in(
    pin: PinDeployment, address: str, on_app1: int, on_app2: int
) -> None:
    stack = pin.stack
    await stack.add_app(
        {"name": "two", "domain": "app2.localhost", "idps": ["pin"]},
        [
            {"name": "subdomains", "action": "allow", "include": [{"email_domain": ".corp.com"}]},
            {"name": "partners", "action": "allow",
             "include": [{"email_list": ["listed@partner.org"]}]},
        ],
    )
    for host, expected in (("app1.localhost", on_app1), ("app2.localhost", on_app2)):
        async with new_visitor() as visitor:
            login = location(await visitor.get(stack.url(host)))
            form = hidden_fields((await visitor.get(login)).text)
            sent = await visitor.post(stack.url(AUTH, f"{PREFIX}/otp/email"),
                                      data={**form, "email": address})
            if expected == 400:
                assert sent.status_code == 400, (host, address)
                continue
            assert sent.status_code == 200
            answer = await visitor.post(
                stack.url(AUTH, f"{PREFIX}/otp/code"),
                data={**hidden_fields(sent.text), "code": pin.inbox.last},
            )
            final = await follow(visitor, answer)
            assert final.status_code == expected, (host, address, final.text[:300])
            if expected == 200:
                assert final.json()["assertion"]["claims"]["email"].lower() == address.lower()
