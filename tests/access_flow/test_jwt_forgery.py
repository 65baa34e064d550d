"""Forged, tampered and misplaced app tokens presented to the real edge as the app cookie.

Each one must send the visitor to the login and never reach the origin. Some forgeries are
signed with the edge's own active key (taken from the running edge), so the only thing wrong
with them is a claim: that proves claims are checked, not just signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import PinDeployment
from .harness import AUTH, PREFIX, follow, location, new_visitor, query_of

pytestmark = pytest.mark.e2e


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    return (json.loads(base64.urlsafe_b64decode(head + "==")),
            json.loads(base64.urlsafe_b64decode(body + "==")))


ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def attacker_signed(claims: dict[str, Any], headers: dict[str, Any]) -> str:
    return jwt.encode(claims, ATTACKER, algorithm="RS256", headers=headers)


Forgery = Callable[[str, PinDeployment], str]


def alg_none(token: str, pin: PinDeployment) -> str:
    header, claims = parts(token)
    return f"{segment({**header, 'alg': 'none'})}.{segment({**claims, 'email': 'x@corp.com'})}."


def hs256_with_public_key(token: str, pin: PinDeployment) -> str:
    header, claims = parts(token)
    public = pin.stack.access.keys.current.active.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({**header, 'alg': 'HS256'})}.{segment(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def unknown_kid(token: str, pin: PinDeployment) -> str:
    _, claims = parts(token)
    return attacker_signed(claims, {"kid": "attacker-key"})


def our_kid_their_key(token: str, pin: PinDeployment) -> str:
    header, claims = parts(token)
    return attacker_signed(claims, {"kid": header["kid"]})


def kid_with_path(token: str, pin: PinDeployment) -> str:
    _, claims = parts(token)
    return attacker_signed(claims, {"kid": "../../../../dev/null"})


def jku_header(token: str, pin: PinDeployment) -> str:
    header, claims = parts(token)
    return attacker_signed(claims, {"kid": header["kid"], "jku": "https://evil.example/jwks"})


def x5u_header(token: str, pin: PinDeployment) -> str:
    header, claims = parts(token)
    return attacker_signed(claims, {"kid": header["kid"], "x5u": "https://evil.example/c.pem"})


def tampered_payload(token: str, pin: PinDeployment) -> str:
    head, _, signature = token.split(".")
    _, claims = parts(token)
    return f"{head}.{segment({**claims, 'email': 'ceo@corp.com'})}.{signature}"


def edge_signed(change: dict[str, Any]) -> Forgery:
    def forge(token: str, pin: PinDeployment) -> str:
        _, claims = parts(token)
        key = pin.stack.access.keys.current.active
        return jwt.encode({**claims, **change}, key.private_key, algorithm="RS256",
                          headers={"kid": key.kid})

    forge.__name__ = "edge_signed_" + "_".join(change)
    return forge


NOW = int(time.time())
FORGERIES: list[Forgery] = [
    alg_none,
    hs256_with_public_key,
    unknown_kid,
    our_kid_their_key,
    kid_with_path,
    jku_header,
    x5u_header,
    tampered_payload,
    edge_signed({"exp": NOW - 10}),
    edge_signed({"nbf": NOW + 3600, "iat": NOW + 3600}),
    edge_signed({"iss": "https://auth.evil.example"}),
    edge_signed({"aud": ["another-app"]}),
    edge_signed({"type": "org"}),
    edge_signed({"identity_nonce": "no-such-session"}),
]


async def signed_in_token(pin: PinDeployment, visitor: Any) -> str:
    page = await pin.stack.otp_login(
        visitor, pin.inbox, pin.stack.url("app1.localhost"), "rita@corp.com"
    )
    assert page.status_code == 200
    token = visitor.cookies.get("CF_Authorization", domain="app1.localhost")
    assert token
    return str(token)


@pytest.mark.parametrize("forge", FORGERIES, ids=lambda forge: forge.__name__)
async def test_forged_tokens_are_refused(pin: PinDeployment, forge: Forgery) -> None:
    url = pin.stack.url("app1.localhost", "/secret")
    async with new_visitor() as visitor:
        genuine = await signed_in_token(pin, visitor)
    before = len(pin.stack.origin.requests)
    async with new_visitor() as attacker:
        attacker.cookies.set("CF_Authorization", genuine, domain="app1.localhost")
        assert (await attacker.get(url)).status_code == 200  # the genuine one works
        attacker.cookies.clear()
        attacker.cookies.set("CF_Authorization", forge(genuine, pin), domain="app1.localhost")
        answer = await attacker.get(url)
    assert answer.status_code == 302
    assert location(answer).startswith(pin.stack.url(AUTH, f"{PREFIX}/login"))
    assert len(pin.stack.origin.requests) == before + 1


async def test_a_token_for_app_a_does_not_open_app_b(pin: PinDeployment) -> None:
    stack = pin.stack
    await stack.add_app(
        {"name": "two", "domain": "app2.localhost", "idps": ["pin"]},
        [{"name": "corp", "action": "allow", "include": [{"email_domain": "corp.com"}]}],
    )
    async with new_visitor() as visitor:
        token_a = await signed_in_token(pin, visitor)
        page_b = await follow(visitor, await visitor.get(stack.url("app2.localhost")))
        assert page_b.status_code == 200
    async with new_visitor() as replay:
        replay.cookies.set("CF_Authorization", token_a, domain="app2.localhost")
        answer = await replay.get(stack.url("app2.localhost", "/"))
    assert answer.status_code == 302
    assert query_of(location(answer))["app"] == stack.apps["two"].aud
