"""The test OpenID provider is real: discovery, a full code + PKCE login, a verifiable ID token."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx
import jwt
import pytest
from idp import fixture as idp_fixture
from idp.fixture import (
    LoginRefused,
    OidcAccount,
    OidcClient,
    OidcProvider,
    StartOidcProvider,
    sign_in_at_provider,
    sign_in_at_provider_async,
    start_oidc_provider,
)

__all__ = ["start_oidc_provider"]  # the fixture, imported so pytest finds it

REDIRECT_URI = "https://auth.example.com/cdn-cgi/access/callback"
CLIENT: OidcClient = {
    "client_id": "tunnelgate-edge",
    "client_secret": "client-secret-for-tests",
    "redirect_uris": [REDIRECT_URI],
}
ALICE: OidcAccount = {
    "sub": "alice",
    "email": "alice@corp.com",
    "email_verified": True,
    "name": "Alice Example",
    "groups": ["eng", "admins"],
}


@pytest.fixture
def provider(start_oidc_provider: StartOidcProvider, tmp_path: Path) -> OidcProvider:
    return start_oidc_provider(tmp_path, [CLIENT], [ALICE])


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(discovery: dict[str, str], *, state: str, nonce: str, challenge: str) -> str:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "openid email profile groups",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{discovery['authorization_endpoint']}?{query}"


def test_discovery_document_describes_the_provider(provider: OidcProvider) -> None:
    assert provider.issuer.startswith("http://127.0.0.1:")
    with httpx.Client() as client:
        discovery = client.get(f"{provider.issuer}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == provider.issuer
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert {"email", "email_verified", "groups", "name"} <= set(discovery["claims_supported"])


def test_code_flow_with_pkce_yields_a_verifiable_id_token(provider: OidcProvider) -> None:
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with httpx.Client() as client:
        discovery = client.get(f"{provider.issuer}/.well-known/openid-configuration").json()
        url = authorization_url(discovery, state=state, nonce=nonce, challenge=challenge)
        callback = sign_in_at_provider(client, url, login="alice", redirect_uri=REDIRECT_URI)
        params = parse_qs(callback.query.decode())
        assert params["state"] == [state]
        assert params["iss"] == [provider.issuer]
        token_response = client.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            auth=(CLIENT["client_id"], CLIENT["client_secret"]),
        )
        assert token_response.status_code == 200, token_response.text
        id_token = token_response.json()["id_token"]
        jwks = client.get(discovery["jwks_uri"]).json()

    signing_key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(id_token)["kid"]]
    claims = jwt.decode(
        id_token,
        signing_key.key,
        algorithms=["RS256"],
        audience=CLIENT["client_id"],
        issuer=provider.issuer,
    )
    assert claims["sub"] == "alice"
    assert claims["nonce"] == nonce
    assert claims["email"] == "alice@corp.com"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice Example"
    assert claims["groups"] == ["eng", "admins"]


async def test_async_login_walk_reaches_the_redirect_uri(provider: OidcProvider) -> None:
    _verifier, challenge = pkce_pair()
    async with httpx.AsyncClient() as client:
        discovery = (await client.get(f"{provider.issuer}/.well-known/openid-configuration")).json()
        url = authorization_url(discovery, state="st", nonce="n", challenge=challenge)
        callback = await sign_in_at_provider_async(
            client, url, login="alice", redirect_uri=REDIRECT_URI
        )
    params = parse_qs(callback.query.decode())
    assert params["state"] == ["st"]
    assert params["code"][0]


def test_code_cannot_be_redeemed_without_the_pkce_verifier(provider: OidcProvider) -> None:
    _verifier, challenge = pkce_pair()
    with httpx.Client() as client:
        discovery = client.get(f"{provider.issuer}/.well-known/openid-configuration").json()
        url = authorization_url(discovery, state="s", nonce="n", challenge=challenge)
        callback = sign_in_at_provider(client, url, login="alice", redirect_uri=REDIRECT_URI)
        code = parse_qs(callback.query.decode())["code"][0]
        response = client.post(
            discovery["token_endpoint"],
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
            auth=(CLIENT["client_id"], CLIENT["client_secret"]),
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_authorization_without_pkce_is_refused(provider: OidcProvider) -> None:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "openid email",
            "state": "s",
        }
    )
    with httpx.Client() as client:
        response = client.get(f"{provider.issuer}/auth?{query}")
    assert response.is_redirect
    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(REDIRECT_URI)
    assert parse_qs(location.query.decode())["error"] == ["invalid_request"]


def test_unknown_login_name_is_refused(provider: OidcProvider) -> None:
    _verifier, challenge = pkce_pair()
    with httpx.Client() as client:
        discovery = client.get(f"{provider.issuer}/.well-known/openid-configuration").json()
        url = authorization_url(discovery, state="s", nonce="n", challenge=challenge)
        with pytest.raises(LoginRefused, match="403"):
            sign_in_at_provider(client, url, login="mallory", redirect_uri=REDIRECT_URI)


# --- the fixture fails loudly, never skips ------------------------------------------------------


def test_missing_node_modules_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(idp_fixture, "IDP_DIR", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"cd tests/idp && npm ci"):
        idp_fixture.launch_oidc_provider(tmp_path, [CLIENT], [ALICE])


def test_missing_node_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"`node` is not installed.*npm ci"):
        idp_fixture.launch_oidc_provider(tmp_path, [CLIENT], [ALICE])


def test_provider_that_dies_at_startup_reports_its_stderr(tmp_path: Path) -> None:
    nameless: OidcAccount = {**ALICE, "sub": ""}
    with pytest.raises(
        pytest.fail.Exception, match=r"(?s)exited with status 1.*accounts\[0\]\.sub"
    ):
        idp_fixture.launch_oidc_provider(tmp_path, [CLIENT], [nameless])
