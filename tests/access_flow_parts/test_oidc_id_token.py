"""ID-token forgery and provider misbehaviour, against an in-process provider we control.

The real provider (test_oidc_provider.py) only ever issues good tokens; these tests need a
provider that signs what the test asks for, so it is an ``httpx.MockTransport`` handler.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.access.idp import IdpLoginRefused, IdpUnavailable
from edge.access.idp.oidc import OidcProvider
from edge.access.tokens import public_jwk

from .doubles import SteppedClock

ISSUER = "https://idp.example.com"
CLIENT_ID = "edge"
NONCE = "the-login-nonce"
REDIRECT = "https://auth.example.com/cdn-cgi/access/callback"


class FakeProvider:
    """Discovery, JWKS and a token endpoint that returns whatever ID token the test sets."""

    def __init__(self, clock: SteppedClock) -> None:
        self.clock = clock
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.published: list[dict[str, Any]] = [
            {**public_jwk(self.rsa.public_key()), "kid": "rsa-1", "alg": "RS256", "use": "sig"},
            {**public_jwk(self.ec.public_key()), "kid": "ec-1", "alg": "ES256", "use": "sig"},
        ]
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}/auth",
            "token_endpoint": f"{ISSUER}/token",
            "jwks_uri": f"{ISSUER}/jwks",
            "code_challenge_methods_supported": ["S256"],
        }
        self.id_token = ""
        self.token_body: bytes | None = None
        self.requests: list[httpx.Request] = []

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": "u-1",
            "exp": now + 300,
            "iat": now,
            "nonce": NONCE,
            "email": "alice@corp.com",
            "email_verified": True,
            "groups": ["eng"],
            "amr": ["pwd", "mfa"],
        }
        claims.update(changes)
        return {key: value for key, value in claims.items() if value is not None}

    def sign(self, claims: dict[str, Any], *, kid: str = "rsa-1", **headers: Any) -> str:
        key = self.ec if kid.startswith("ec") else self.rsa
        algorithm = "ES256" if kid.startswith("ec") else "RS256"
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid, **headers})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.discovery)
        if path == "/jwks":
            return httpx.Response(200, json={"keys": self.published})
        if path == "/token":
            if self.token_body is not None:
                return httpx.Response(200, content=self.token_body)
            return httpx.Response(
                200,
                json={
                    "id_token": self.id_token,
                    "access_token": "AT-SECRET",
                    "refresh_token": "RT",
                },
            )
        return httpx.Response(404)

    def count(self, path: str) -> int:
        return sum(request.url.path == path for request in self.requests)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def fake(clock: SteppedClock) -> FakeProvider:
    return FakeProvider(clock)


def make_client(fake: FakeProvider, clock: SteppedClock, **kwargs: Any) -> OidcProvider:
    factory: Callable[[], httpx.AsyncClient] = lambda: httpx.AsyncClient(  # noqa: E731
        transport=httpx.MockTransport(fake.handle)
    )
    return OidcProvider("corp", ISSUER, CLIENT_ID, "secret", http=factory, clock=clock, **kwargs)


async def exchange(oidc: OidcProvider) -> Any:
    return await oidc.exchange(
        code="code", code_verifier="v" * 43, redirect_uri=REDIRECT, expected_nonce=NONCE
    )


async def refused_reason(oidc: OidcProvider) -> str:
    with pytest.raises(IdpUnavailable) as caught:
        await exchange(oidc)
    assert caught.value.http_status == 502
    return caught.value.reason


async def test_a_good_token_gives_the_identity_and_drops_the_idp_tokens(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    fake.id_token = fake.sign(fake.claims())
    identity = await exchange(make_client(fake, clock))
    assert (identity.sub, identity.email, identity.email_verified) == (
        "u-1",
        "alice@corp.com",
        True,
    )
    assert identity.amr == ("pwd", "mfa")
    assert "AT-SECRET" not in repr(identity)
    assert "RT" not in identity.__slots__
    token_request = next(r for r in fake.requests if r.url.path == "/token")
    assert token_request.headers["authorization"].startswith("Basic ")
    form = dict(httpx.QueryParams(token_request.content.decode()))
    assert form["grant_type"] == "authorization_code"
    assert form["code_verifier"] == "v" * 43
    assert "client_secret" not in form


async def test_es256_tokens_are_accepted(fake: FakeProvider, clock: SteppedClock) -> None:
    fake.id_token = fake.sign(fake.claims(), kid="ec-1")
    assert (await exchange(make_client(fake, clock))).sub == "u-1"


async def test_alg_none_is_refused(fake: FakeProvider, clock: SteppedClock) -> None:
    fake.id_token = jwt.encode(fake.claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    assert await refused_reason(make_client(fake, clock)) == "bad_id_token"


async def test_hs256_signed_with_the_public_key_is_refused(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    public_pem = fake.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    segments = [
        jwt.utils.base64url_encode(json.dumps(part).encode()) for part in (header, fake.claims())
    ]
    signing_input = b".".join(segments)
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    fake.id_token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    assert await refused_reason(make_client(fake, clock)) == "bad_id_token"


async def test_token_signed_by_another_key_with_our_kid_is_refused(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake.id_token = jwt.encode(
        fake.claims(),
        attacker,
        algorithm="RS256",
        headers={"kid": "rsa-1", "jku": "https://evil.example/jwks"},
    )
    assert await refused_reason(make_client(fake, clock)) == "bad_id_token"


async def test_unknown_kid_refreshes_the_jwks_once_and_rate_limits(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    oidc = make_client(fake, clock)
    fake.id_token = fake.sign(fake.claims())
    await exchange(oidc)
    assert fake.count("/jwks") == 1
    clock.advance(61)
    fake.id_token = fake.sign(fake.claims(), kid="rsa-unknown")
    assert await refused_reason(oidc) == "unknown_kid"
    assert fake.count("/jwks") == 2
    assert await refused_reason(oidc) == "unknown_kid"
    assert fake.count("/jwks") == 2  # refreshed at most once per interval


async def test_provider_key_rotation_is_picked_up(fake: FakeProvider, clock: SteppedClock) -> None:
    oidc = make_client(fake, clock)
    await oidc.prepare()
    clock.advance(120)
    fake.published[0] = {**fake.published[0], "kid": "rsa-2"}
    fake.id_token = fake.sign(fake.claims(), kid="rsa-2")
    assert (await exchange(oidc)).sub == "u-1"
    assert fake.count("/jwks") == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"exp": 0},
        {"iat": 10**12},
        {"nbf": 10**12},
        {"sub": None},
        {"exp": None},
        {"aud": [CLIENT_ID, "other"]},  # several audiences need azp
        {"aud": [CLIENT_ID, "other"], "azp": "other"},
    ],
)
async def test_bad_claims_are_refused(
    fake: FakeProvider, clock: SteppedClock, changes: dict[str, Any]
) -> None:
    fake.id_token = fake.sign(fake.claims(**changes))
    assert await refused_reason(make_client(fake, clock)) == "bad_id_token"


async def test_several_audiences_with_our_azp_are_accepted(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    fake.id_token = fake.sign(fake.claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))
    assert (await exchange(make_client(fake, clock))).sub == "u-1"


async def test_missing_nonce_is_a_nonce_mismatch(fake: FakeProvider, clock: SteppedClock) -> None:
    fake.id_token = fake.sign(fake.claims(nonce=None))
    with pytest.raises(IdpLoginRefused, match="nonce_mismatch"):
        await exchange(make_client(fake, clock))


@pytest.mark.parametrize(
    ("changes", "trust", "expected"),
    [
        ({"email_verified": None}, False, False),
        ({"email_verified": None}, True, True),
        ({"email_verified": "true"}, False, True),
        ({"email_verified": "yes"}, False, False),
        ({"email_verified": False}, True, False),
    ],
)
async def test_email_verified_handling(
    fake: FakeProvider,
    clock: SteppedClock,
    changes: dict[str, Any],
    trust: bool,
    expected: bool,
) -> None:
    fake.id_token = fake.sign(fake.claims(**changes))
    oidc = make_client(fake, clock, trust_email_without_verified_claim=trust)
    assert (await exchange(oidc)).email_verified is expected


@pytest.mark.parametrize(
    ("claim_value", "groups"),
    [(["a", "b"], ("a", "b")), ("solo", ("solo",)), ([1, "x", None], ("x",)), (None, ()), (7, ())],
)
async def test_groups_from_a_configurable_claim(
    fake: FakeProvider, clock: SteppedClock, claim_value: Any, groups: tuple[str, ...]
) -> None:
    fake.id_token = fake.sign(fake.claims(roles=claim_value))
    oidc = make_client(fake, clock, groups_claim="roles")
    assert (await exchange(oidc)).groups == groups


async def test_oversized_token_response_is_refused(fake: FakeProvider, clock: SteppedClock) -> None:
    fake.token_body = b'{"id_token": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert await refused_reason(make_client(fake, clock)) == "response_too_large"


async def test_missing_id_token_is_refused(fake: FakeProvider, clock: SteppedClock) -> None:
    fake.token_body = b'{"access_token": "AT"}'
    assert await refused_reason(make_client(fake, clock)) == "no_id_token"


@pytest.mark.parametrize(
    "changes",
    [
        {"token_endpoint": "http://idp.example.com/token"},
        {"jwks_uri": None},
        {"code_challenge_methods_supported": ["plain"]},
    ],
)
async def test_unsafe_discovery_documents_are_refused(
    fake: FakeProvider, clock: SteppedClock, changes: dict[str, Any]
) -> None:
    fake.discovery.update(changes)
    fake.discovery = {key: value for key, value in fake.discovery.items() if value is not None}
    with pytest.raises(IdpUnavailable) as caught:
        await make_client(fake, clock).discover()
    assert caught.value.reason == "bad_discovery"


async def test_known_endpoints_survive_a_failed_rediscovery(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    oidc = make_client(fake, clock)
    await oidc.prepare()
    clock.advance(3600)
    fake.discovery["issuer"] = "https://changed.example"
    await oidc.prepare()
    assert oidc.endpoints is not None
    assert fake.count("/.well-known/openid-configuration") == 2


async def test_authorization_url_needs_discovery(fake: FakeProvider, clock: SteppedClock) -> None:
    with pytest.raises(IdpUnavailable, match="not_discovered"):
        make_client(fake, clock).authorization_url(
            state="s", nonce="n", code_challenge="c" * 43, redirect_uri=REDIRECT
        )


async def test_failed_discovery_is_not_retried_at_once(
    fake: FakeProvider, clock: SteppedClock
) -> None:
    fake.discovery["issuer"] = "https://someone-else.example"
    oidc = make_client(fake, clock)
    for _ in range(3):
        with pytest.raises(IdpUnavailable, match="issuer_mismatch"):
            await oidc.prepare()
    assert fake.count("/.well-known/openid-configuration") == 1
    clock.advance(10)
    fake.discovery["issuer"] = ISSUER
    await oidc.prepare()
    assert oidc.endpoints is not None
    assert fake.count("/.well-known/openid-configuration") == 2
