"""The connector's assertion check on its own: forged tokens, key refresh, config errors, and
the CLI's token cache permissions."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from connector.access import (
    AccessRequirement,
    AssertionRejected,
    AssertionVerifier,
    parse_access_requirement,
)
from connector.access_client import load_app_token, save_app_token
from connector.errors import ConfigError

ISSUER = "https://auth.example.com"
AUD = "aud-one"
REQUIREMENT = AccessRequirement(ISSUER, (AUD,))


class Keys:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches = 0
        self.kid = "k1"

    async def fetch(self, url: str) -> Mapping[str, Any]:
        assert url == ISSUER + "/cdn-cgi/access/certs"
        self.fetches += 1
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, *, kid: str = "k1", **changes: object) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUD, "sub": "s", "iat": now, "exp": now + 60, **changes}
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": kid})


def head(token: str | None) -> dict[str, object]:
    headers = [["Cf-Access-Jwt-Assertion", token]] if token is not None else []
    return {"kind": "tcp", "host": "h", "headers": headers}


async def test_a_valid_assertion_passes_and_forgeries_are_refused() -> None:
    keys = Keys()
    verifier = AssertionVerifier(fetch=keys.fetch)
    claims = await verifier.check(head(keys.token()), REQUIREMENT)
    assert claims is not None
    assert claims["aud"] == AUD
    forged = [
        None,
        keys.token(aud="other-app"),
        keys.token(iss="https://evil.example"),
        keys.token(exp=int(time.time()) - 600),
        jwt.encode({"iss": ISSUER, "aud": AUD}, key="", algorithm="none"),
        keys.token()[:-4] + "AAAA",
    ]
    for token in forged:
        with pytest.raises(AssertionRejected):
            await verifier.check(head(token), REQUIREMENT)


async def test_an_unknown_kid_refreshes_the_keys_at_most_once_per_floor() -> None:
    keys = Keys()
    now = [1000.0]
    verifier = AssertionVerifier(fetch=keys.fetch, clock=lambda: now[0], refresh_floor=10)
    await verifier.check(head(keys.token()), REQUIREMENT)
    assert keys.fetches == 1
    for _ in range(3):
        with pytest.raises(AssertionRejected):
            await verifier.check(head(keys.token(kid="nope")), REQUIREMENT)
    assert keys.fetches == 1
    keys.kid = "k2"  # the edge rotated its key
    now[0] += 11
    await verifier.check(head(keys.token(kid="k2")), REQUIREMENT)
    assert keys.fetches == 2


def test_config_errors_name_the_key_path() -> None:
    where = "ingress[0].originRequest.access"
    with pytest.raises(ConfigError, match=r"access\.audTag"):
        parse_access_requirement({"teamDomain": ISSUER}, where)
    with pytest.raises(ConfigError, match=r"access\.color"):
        parse_access_requirement({"teamDomain": ISSUER, "audTag": ["a"], "color": 1}, where)
    parsed = parse_access_requirement({"teamDomain": ISSUER + "/", "audTag": "a"}, where)
    assert parsed.keys_url == ISSUER + "/cdn-cgi/access/certs"
    assert parsed.aud_tags == ("a",)


def test_the_token_cache_is_private(tmp_path: Path) -> None:
    path = save_app_token("App.Example.com", "tok.en.value", home=tmp_path)
    assert path == tmp_path / ".tunnelgate" / "tokens" / "app.example.com.jwt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_app_token("app.example.com", home=tmp_path) == "tok.en.value"
