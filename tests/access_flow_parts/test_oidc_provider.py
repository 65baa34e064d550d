"""The OpenID Connect client against the real test provider (the npm package oidc-provider)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from idp.fixture import (
    OidcAccount,
    OidcClient,
    OidcProvider,
    StartOidcProvider,
    sign_in_at_provider_async,
    start_oidc_provider,
)

from edge.access.identity import Identity
from edge.access.idp import IdpLoginRefused, IdpUnavailable
from edge.access.idp.oidc import OidcProvider as OidcClientSide
from edge.access.sealing import Sealer
from edge.access.sessions import LoginState, SessionManager

from .doubles import SECRET, CountingRandom

__all__ = ["start_oidc_provider"]  # the fixture, imported so pytest finds it

REDIRECT_URI = "https://auth.example.com/cdn-cgi/access/callback"
CLIENT: OidcClient = {
    "client_id": "tunnelgate-edge",
    "client_secret": "secret with spaces & symbols:/",
    "redirect_uris": [REDIRECT_URI],
}
OTHER_CLIENT: OidcClient = {
    "client_id": "another-relying-party",
    "client_secret": "another-secret",
    "redirect_uris": [REDIRECT_URI],
}
ALICE: OidcAccount = {
    "sub": "alice",
    "email": "alice@corp.com",
    "email_verified": True,
    "name": "Alice Example",
    "groups": ["eng", "admins"],
}
EVE: OidcAccount = {
    "sub": "eve",
    "email": "eve@corp.com",
    "email_verified": False,
    "name": "Eve",
    "groups": [],
}
SCOPES = ("openid", "email", "profile", "groups")


@pytest.fixture
def provider(start_oidc_provider: StartOidcProvider, tmp_path: Path) -> OidcProvider:
    return start_oidc_provider(tmp_path, [CLIENT, OTHER_CLIENT], [ALICE, EVE])


def client_side(
    provider: OidcProvider, client: OidcClient = CLIENT, *, issuer: str | None = None
) -> OidcClientSide:
    return OidcClientSide(
        "corp",
        issuer or provider.issuer,
        client["client_id"],
        client["client_secret"],
        scopes=SCOPES,
        clock=time.time,
    )


def new_login() -> LoginState:
    random = CountingRandom(str(time.monotonic_ns()).encode())
    sealer = Sealer(SECRET, clock=time.time, random_bytes=random)
    manager = SessionManager(time.time, random, sealer=sealer)
    login, _cookie = manager.begin_login(return_url="/", app_aud="aud", idp="corp")
    return login


async def sign_in(oidc: OidcClientSide, login: LoginState, account: str = "alice") -> str:
    """Walk the provider's login pages; returns the authorization code from the callback."""
    await oidc.prepare()
    url = oidc.authorization_url(
        state=login.state,
        nonce=login.nonce,
        code_challenge=login.code_challenge,
        redirect_uri=REDIRECT_URI,
    )
    async with httpx.AsyncClient() as browser:
        callback = await sign_in_at_provider_async(
            browser, url, login=account, redirect_uri=REDIRECT_URI
        )
    params = {key: values[0] for key, values in parse_qs(callback.query.decode()).items()}
    assert params["state"] == login.state
    return oidc.check_callback(params)


async def test_discovery_checks_issuer_and_caches_endpoints(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    assert oidc.endpoints is None
    endpoints = await oidc.discover()
    assert endpoints.authorization_endpoint.startswith(provider.issuer)
    assert endpoints.token_endpoint.startswith(provider.issuer)
    assert endpoints.jwks_uri.startswith(provider.issuer)
    assert oidc.endpoints == endpoints


async def test_authorization_url_always_uses_pkce_s256(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    await oidc.prepare()
    login = new_login()
    url = oidc.authorization_url(
        state=login.state,
        nonce=login.nonce,
        code_challenge=login.code_challenge,
        redirect_uri=REDIRECT_URI,
        prompt="login",
    )
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == login.code_challenge
    assert query["state"] == login.state
    assert query["nonce"] == login.nonce
    assert query["scope"] == "openid email profile groups"
    assert query["prompt"] == "login"
    with pytest.raises(ValueError, match="S256"):
        oidc.authorization_url(
            state="s", nonce="n", code_challenge="plain-verifier", redirect_uri=REDIRECT_URI
        )


async def test_full_login_with_pkce_yields_the_identity(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login)
    identity = await oidc.exchange(
        code=code,
        code_verifier=login.pkce_verifier,
        redirect_uri=REDIRECT_URI,
        expected_nonce=login.nonce,
    )
    assert isinstance(identity, Identity)
    assert identity.sub == "alice"
    assert identity.email == "alice@corp.com"
    assert identity.email_verified is True
    assert identity.name == "Alice Example"
    assert identity.groups == ("eng", "admins")
    assert identity.idp == "corp"


async def test_unverified_email_is_passed_through_as_false(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login, account="eve")
    identity = await oidc.exchange(
        code=code,
        code_verifier=login.pkce_verifier,
        redirect_uri=REDIRECT_URI,
        expected_nonce=login.nonce,
    )
    assert identity.email == "eve@corp.com"
    assert identity.email_verified is False
    assert identity.groups == ()


async def test_wrong_nonce_is_refused(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login)
    with pytest.raises(IdpLoginRefused) as caught:
        await oidc.exchange(
            code=code,
            code_verifier=login.pkce_verifier,
            redirect_uri=REDIRECT_URI,
            expected_nonce=new_login().nonce,
        )
    assert caught.value.reason == "nonce_mismatch"
    assert caught.value.http_status == 401


async def test_tampered_code_is_refused(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login)
    tampered = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
    with pytest.raises(IdpLoginRefused) as caught:
        await oidc.exchange(
            code=tampered,
            code_verifier=login.pkce_verifier,
            redirect_uri=REDIRECT_URI,
            expected_nonce=login.nonce,
        )
    assert caught.value.reason == "code_rejected"
    assert caught.value.http_status == 400


async def test_code_used_twice_is_refused(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login)
    arguments = {
        "code": code,
        "code_verifier": login.pkce_verifier,
        "redirect_uri": REDIRECT_URI,
        "expected_nonce": login.nonce,
    }
    await oidc.exchange(**arguments)
    with pytest.raises(IdpLoginRefused) as caught:
        await oidc.exchange(**arguments)
    assert caught.value.reason == "code_rejected"


async def test_wrong_pkce_verifier_is_refused(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    login = new_login()
    code = await sign_in(oidc, login)
    with pytest.raises(IdpLoginRefused) as caught:
        await oidc.exchange(
            code=code,
            code_verifier=new_login().pkce_verifier,
            redirect_uri=REDIRECT_URI,
            expected_nonce=login.nonce,
        )
    assert caught.value.reason == "code_rejected"


async def test_code_issued_to_another_client_is_refused(provider: OidcProvider) -> None:
    login = new_login()
    code = await sign_in(client_side(provider, OTHER_CLIENT), login)
    with pytest.raises(IdpLoginRefused) as caught:
        await client_side(provider).exchange(
            code=code,
            code_verifier=login.pkce_verifier,
            redirect_uri=REDIRECT_URI,
            expected_nonce=login.nonce,
        )
    assert caught.value.reason == "code_rejected"


async def test_wrong_client_secret_is_a_provider_side_failure(provider: OidcProvider) -> None:
    login = new_login()
    code = await sign_in(client_side(provider), login)
    wrong: OidcClient = {**CLIENT, "client_secret": "not the secret"}
    with pytest.raises(IdpUnavailable) as caught:
        await client_side(provider, wrong).exchange(
            code=code,
            code_verifier=login.pkce_verifier,
            redirect_uri=REDIRECT_URI,
            expected_nonce=login.nonce,
        )
    assert caught.value.reason == "client_rejected"
    assert caught.value.http_status == 502


@pytest.mark.parametrize("spelling", ["{issuer}/", "{localhost}", "{issuer}/tenant"])
async def test_issuer_mismatch_is_refused(provider: OidcProvider, spelling: str) -> None:
    configured = spelling.format(
        issuer=provider.issuer, localhost=provider.issuer.replace("127.0.0.1", "localhost")
    )
    oidc = client_side(provider, issuer=configured)
    with pytest.raises(IdpUnavailable) as caught:
        await oidc.discover()
    assert caught.value.reason in ("issuer_mismatch", "provider_http_error")
    assert caught.value.http_status == 502
    if spelling != "{issuer}/tenant":
        assert caught.value.reason == "issuer_mismatch"


async def test_unreachable_provider_is_a_502() -> None:
    oidc = OidcClientSide("corp", "http://127.0.0.1:1", "c", "s", clock=time.time)
    with pytest.raises(IdpUnavailable) as caught:
        await oidc.prepare()
    assert caught.value.reason == "unreachable"
    assert caught.value.http_status == 502
    assert not caught.value.permanent


async def test_callback_checks(provider: OidcProvider) -> None:
    oidc = client_side(provider)
    await oidc.prepare()
    with pytest.raises(IdpLoginRefused, match="provider_refused: access_denied"):
        oidc.check_callback({"error": "access_denied", "state": "s"})
    with pytest.raises(IdpLoginRefused, match="provider_refused: bad_chars"):
        oidc.check_callback({"error": "<bad_chars>\r\n"})
    with pytest.raises(IdpLoginRefused) as caught:
        oidc.check_callback({"code": "c", "iss": "https://evil.example"})
    assert caught.value.reason == "issuer_mismatch"
    with pytest.raises(IdpLoginRefused) as caught:
        oidc.check_callback({"state": "s", "iss": provider.issuer})
    assert caught.value.reason == "missing_code"
    assert caught.value.http_status == 400
    assert oidc.check_callback({"code": "abc", "iss": provider.issuer}) == "abc"
