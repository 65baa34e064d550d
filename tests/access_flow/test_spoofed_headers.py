"""Spoofed identity headers and cookies, and hop-by-hop tricks, against an origin that folds
``_`` into ``-`` the way WSGI does: it must only ever see what the edge injected."""

from __future__ import annotations

import itertools
import json

import pytest

from .conftest import PinDeployment
from .harness import new_visitor, raw_get

pytestmark = pytest.mark.e2e

SPOOFED = [
    "Cf-Access-Jwt-Assertion",
    "Cf-Access-Authenticated-User-Email",
    "X-Forwarded-Email",
    "X-Forwarded-User",
    "X-Forwarded-Groups",
    "Remote-User",
    "X-Auth-Request-Email",
]
SPELLINGS = {
    "as is": lambda name: name,
    "lower": str.lower,
    "upper": str.upper,
    "underscores": lambda name: name.replace("-", "_"),
    "mixed": lambda name: "_".join(name.split("-", 1)) if "-" in name else name,
}
VALUES = ["mallory@evil.com", " \tmallory@evil.com\t ", "eyJhbGciOiJub25lIn0.e30."]
FORGED_COOKIES = (
    "CF_Authorization=forged; cf_authorization=forged2; CF-Authorization=forged3; "
    "CF.Authorization=forged4; CF_AccessSession=planted; CF_AccessLogin=planted; keep=me"
)


def environ_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


async def app_cookie(pin: PinDeployment) -> str:
    async with new_visitor() as visitor:
        page = await pin.stack.otp_login(
            visitor, pin.inbox, pin.stack.url("app1.localhost"), "rita@corp.com"
        )
        assert page.status_code == 200
        value = visitor.cookies.get("CF_Authorization", domain="app1.localhost")
    assert value
    return value


@pytest.mark.parametrize("host", ["app1.localhost", "open.localhost"])
async def test_every_spelling_of_an_identity_header_is_stripped(
    pin: PinDeployment, host: str
) -> None:
    stack = pin.stack
    cookie = await app_cookie(pin)
    failures = []
    for name, (label, spell), value in itertools.product(SPOOFED, SPELLINGS.items(), VALUES):
        spoofed = spell(name)
        for copies in (1, 2):
            headers = [(spoofed, value)] * copies + [("Cookie", f"CF_Authorization={cookie}")]
            status, body = await raw_get(stack, host, "/check", headers)
            assert status == 200, (spoofed, body[:300])
            seen = json.loads(body)
            got = seen["environ"].get(environ_key(name))
            injected = {
                "Cf-Access-Authenticated-User-Email": "rita@corp.com",
                "Cf-Access-Jwt-Assertion": seen["environ"].get("HTTP_CF_ACCESS_JWT_ASSERTION"),
            }
            expected = injected.get(name) if host == "app1.localhost" else None
            verified = "claims" in (seen["assertion"] or {})
            if (
                got != expected
                or (got is not None and "," in got)
                or (host == "app1.localhost") != verified
                or "mallory" in json.dumps(seen["environ"])
            ):
                failures.append((label, spoofed, copies, value, got))
    assert not failures, failures[:5]


@pytest.mark.parametrize("host", ["app1.localhost", "open.localhost"])
async def test_our_cookies_never_reach_the_origin(pin: PinDeployment, host: str) -> None:
    cookie = await app_cookie(pin)
    for extra in ("", f"; CF_Authorization={cookie}"):
        status, body = await raw_get(
            pin.stack, host, "/", [("Cookie", FORGED_COOKIES + extra), ("Cookie", "also=kept")]
        )
        if host == "app1.localhost" and not extra:
            assert status == 302  # forged and planted values open nothing
            continue
        assert status == 200
        environ = json.loads(body)["environ"]
        assert environ["HTTP_COOKIE"] == "keep=me,also=kept"


@pytest.mark.parametrize(
    "connection",
    [
        "Cf-Access-Jwt-Assertion, Cf-Access-Authenticated-User-Email, X-Forwarded-Email",
        "close, cf_access_jwt_assertion, CF_ACCESS_AUTHENTICATED_USER_EMAIL",
        "Cookie",
    ],
)
async def test_a_client_cannot_make_the_edge_drop_its_own_headers(
    pin: PinDeployment, connection: str
) -> None:
    cookie = await app_cookie(pin)
    status, body = await raw_get(
        pin.stack, "app1.localhost", "/", [("Connection", connection),
                                           ("Cookie", f"CF_Authorization={cookie}")]
    )
    if connection == "Cookie":
        # Naming Cookie removes the client's own cookie before Access reads it: no identity.
        assert status == 302
        return
    assert status == 200
    seen = json.loads(body)
    assert seen["environ"]["HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL"] == "rita@corp.com"
    assert seen["assertion"]["claims"]["email"] == "rita@corp.com"


@pytest.mark.parametrize("host", ["app1.localhost", "open.localhost"])
async def test_a_repeated_request_reaches_the_origin_the_same_every_time(
    pin: PinDeployment, host: str
) -> None:
    # The edge remembers the cleaned and scrubbed header lists of a request it saw before;
    # what it adds afterwards (the assertion, the e-mail) must never pile up in them.
    cookie = await app_cookie(pin)
    headers = [("Cookie", f"CF_Authorization={cookie}; keep=me"), ("X-Forwarded-Email", "m@e"),
               ("Accept", "*/*")]
    seen = []
    for _ in range(3):
        status, body = await raw_get(pin.stack, host, "/same", headers)
        assert status == 200
        seen.append(json.loads(body)["environ"])
    assert seen[0] == seen[1] == seen[2]
    assert "HTTP_X_FORWARDED_EMAIL" not in seen[0]
    assertion = seen[0].get("HTTP_CF_ACCESS_JWT_ASSERTION")
    if host == "app1.localhost":
        assert assertion is not None
        assert "," not in assertion
        assert seen[0]["HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL"] == "rita@corp.com"
    else:
        assert assertion is None
