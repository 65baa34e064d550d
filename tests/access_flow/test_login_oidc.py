"""The whole login against a real OpenID provider, one hop at a time, with httpx."""

from __future__ import annotations

import base64
import json
import time
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from idp.fixture import sign_in_at_provider_async

from .conftest import Corp
from .harness import AUTH, PREFIX, follow, location, new_visitor, query_of

pytestmark = pytest.mark.e2e


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Name -> the whole Set-Cookie line, for checking attributes."""
    found = {}
    for line in response.headers.get_list("set-cookie"):
        found[line.split("=", 1)[0]] = line
    return found


def attributes(line: str) -> dict[str, str]:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(line)
    (morsel,) = cookie.values()
    return {key: str(value) for key, value in morsel.items() if value}


async def test_every_hop_of_a_login_then_sso_to_another_domain(corp: Corp) -> None:
    stack = corp.stack
    original = stack.url("app1.localhost", "/reports?year=2024")
    async with new_visitor() as visitor:
        # 1. the app sends the visitor to the auth domain, carrying the app and the URL
        login = location(await visitor.get(original))
        parts = urlsplit(login)
        assert (parts.hostname, parts.port, parts.path) == (AUTH, stack.port, f"{PREFIX}/login")
        assert query_of(login) == {"app": corp.app1.aud, "redirect_url": original}

        # 2. one IdP: no chooser, straight to the provider with PKCE S256, state and nonce
        to_idp = await visitor.get(login)
        provider_url = location(to_idp)
        assert provider_url.startswith(corp.provider.issuer)
        params = query_of(provider_url)
        assert params["code_challenge_method"] == "S256"
        assert len(params["code_challenge"]) == 43
        assert params["redirect_uri"] == corp.callback
        assert params["state"]
        assert params["nonce"]
        assert params["state"] != params["nonce"]
        login_cookie = attributes(set_cookies(to_idp)["CF_AccessLogin"])
        assert login_cookie["path"] == PREFIX
        assert login_cookie["httponly"]
        assert login_cookie["samesite"] == "Lax"

        # 3. the provider signs alice in and sends her to the callback
        callback = await sign_in_at_provider_async(
            visitor, provider_url, login="alice", redirect_uri=corp.callback
        )
        assert query_of(callback)["state"] == params["state"]
        from_callback = await visitor.get(str(callback))

        # 4. a global session on the auth domain, then a one-time code for app1
        handoff = location(from_callback)
        session_line = set_cookies(from_callback)["CF_AccessSession"]
        assert "Domain" not in session_line
        assert "HttpOnly" in session_line
        handoff_parts = urlsplit(handoff)
        assert handoff_parts.hostname == "app1.localhost"
        assert handoff_parts.path == f"{PREFIX}/authorized"
        assert query_of(handoff)["app"] == corp.app1.aud

        # 5. app1 sets its own host-only cookie and returns to the original URL
        from_authorized = await visitor.get(handoff)
        assert location(from_authorized) == original
        app_cookie = set_cookies(from_authorized)["CF_Authorization"]
        assert "Domain" not in app_cookie
        assert "Secure" not in app_cookie

        # 6. the origin receives a verified identity
        seen = (await visitor.get(original)).json()
        claims = seen["assertion"]["claims"]
        assert claims["email"] == "alice@corp.com"
        assert "eng" in claims["groups"]
        assert claims["idp"] == "corp"
        assert claims["aud"] == [corp.app1.aud]
        assert claims["type"] == "app"
        assert seen["environ"]["HTTP_CF_ACCESS_AUTHENTICATED_USER_EMAIL"] == "alice@corp.com"
        assert "CF_Authorization" not in seen["environ"].get("HTTP_COOKIE", "")
        idp_calls = len(corp.provider.log())

        # 7. app2 on another domain: login hands off at once, no provider round trip
        app2 = stack.url("app2.localhost", "/")
        login2 = location(await visitor.get(app2))
        handoff2 = location(await visitor.get(login2))
        assert urlsplit(handoff2).hostname == "app2.localhost"
        assert location(await visitor.get(handoff2)) == app2
        seen2 = (await visitor.get(app2)).json()
        assert seen2["assertion"]["claims"]["aud"] == [corp.app2.aud]
        assert seen2["assertion"]["claims"]["identity_nonce"] == claims["identity_nonce"]
        assert len(corp.provider.log()) == idp_calls


async def test_logout_ends_the_session_on_every_app(corp: Corp) -> None:
    stack = corp.stack
    app1, app2 = stack.url("app1.localhost"), stack.url("app2.localhost")
    async with new_visitor() as visitor:
        await sign_in_and_follow(corp, visitor, app1, "alice")
        for url in (app2,):
            login = location(await visitor.get(url))
            location(await visitor.get(location(await visitor.get(login))))
        assert (await visitor.get(app2)).status_code == 200
        stolen_app2_cookie = visitor.cookies.get("CF_Authorization", domain="app2.localhost")

        to_auth = await visitor.get(stack.url("app1.localhost", f"{PREFIX}/logout"))
        auth_logout = location(to_auth)
        assert urlsplit(auth_logout).hostname == AUTH
        assert 'CF_Authorization=""' in to_auth.headers["set-cookie"] or \
            "CF_Authorization=;" in to_auth.headers["set-cookie"]
        done = await visitor.get(auth_logout)
        assert done.status_code == 200
        assert "signed out" in done.text

        for url in (app1, app2):
            assert (await visitor.get(url)).status_code == 302
    # The app2 cookie was never cleared by app2, yet it opens nothing any more.
    async with new_visitor() as thief:
        thief.cookies.set("CF_Authorization", stolen_app2_cookie or "", domain="app2.localhost")
        answer = await thief.get(app2)
        assert answer.status_code == 302
        assert urlsplit(location(answer)).path == f"{PREFIX}/login"


async def sign_in_and_follow(
    corp: Corp, visitor: httpx.AsyncClient, url: str, account: str
) -> httpx.Response:
    response = await corp.sign_in(visitor, url, account)
    while response.status_code == 302:
        response = await visitor.get(location(response))
    return response


async def test_a_denied_person_gets_a_page_not_a_loop(corp: Corp) -> None:
    stack = corp.stack
    async with new_visitor() as visitor:
        denied = await corp.sign_in(visitor, stack.url("app1.localhost"), "bob")
        assert denied.status_code == 403
        assert urlsplit(str(denied.url)).hostname == AUTH
        for needle in ("one", "bob@corp.com", "no_policy_matched", f'href="{PREFIX}/logout"'):
            assert needle in denied.text
        # Coming back does not loop: the session exists, the answer is the same page.
        login = location(await visitor.get(stack.url("app1.localhost")))
        again = await visitor.get(login)
        assert again.status_code == 403
        assert "bob@corp.com" in again.text
        # The same session is fine for an app bob may use, without signing in again.
        ok = await follow(visitor, await visitor.get(stack.url("app2.localhost")))
        assert ok.status_code == 200
        assert ok.json()["assertion"]["claims"]["email"] == "bob@corp.com"


async def test_an_unverified_address_is_denied_with_its_reason(corp: Corp) -> None:
    async with new_visitor() as visitor:
        denied = await corp.sign_in(visitor, corp.stack.url("app2.localhost"), "eve")
        assert denied.status_code == 403
        assert "email_unverified" in denied.text


async def test_get_identity_returns_who_but_no_provider_tokens(corp: Corp) -> None:
    stack = corp.stack
    endpoint = stack.url("app1.localhost", f"{PREFIX}/get-identity")
    async with new_visitor() as visitor:
        anonymous = await visitor.get(endpoint)
        assert anonymous.status_code == 401
        await sign_in_and_follow(corp, visitor, stack.url("app1.localhost"), "alice")
        identity = (await visitor.get(endpoint)).json()
        at_auth = (await visitor.get(stack.url(AUTH, f"{PREFIX}/get-identity"))).json()
    assert identity["email"] == "alice@corp.com"
    assert set(identity["groups"]) == {"eng", "admins"}
    assert identity == at_auth
    text = json.dumps(identity)
    for secret in ("access_token", "refresh_token", "id_token", CLIENT_SECRET_MARK):
        assert secret not in text


CLIENT_SECRET_MARK = "edge secret"


async def test_unauthenticated_fetch_gets_401_not_a_redirect(corp: Corp) -> None:
    url = corp.stack.url("app1.localhost", "/api/data")
    async with new_visitor() as visitor:
        for headers in ({"X-Requested-With": "XMLHttpRequest"}, {"Accept": "application/json"}):
            answer = await visitor.get(url, headers=headers)
            assert answer.status_code == 401
            assert answer.json()["error"] == "not_authenticated"


async def test_the_origin_verifies_the_assertion_and_rejects_a_forgery(corp: Corp) -> None:
    stack = corp.stack
    async with new_visitor() as visitor:
        genuine = await sign_in_and_follow(corp, visitor, stack.url("app1.localhost"), "alice")
    token = genuine.json()["environ"]["HTTP_CF_ACCESS_JWT_ASSERTION"]
    assert "claims" in genuine.json()["assertion"]

    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    claims = jwt.decode(token, options={"verify_signature": False})
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = impostor.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    forged = jwt.encode({**claims, "email": "mallory@corp.com", "iat": int(time.time())}, pem,
                        algorithm="RS256", headers={"kid": header["kid"]})
    # An attacker who reaches the origin directly presents the forgery with our key id.
    verdict = await stack.origin.verify(forged, "app1.localhost")
    assert verdict == {"error": "InvalidSignatureError"}
    assert "claims" in await stack.origin.verify(token, "app1.localhost")


async def test_certs_publish_the_keys_tokens_are_signed_with(corp: Corp) -> None:
    async with new_visitor() as visitor:
        document = (await visitor.get(corp.stack.url("app1.localhost", f"{PREFIX}/certs"))).json()
    active = corp.stack.access.keys.current.active
    assert [key["kid"] for key in document["keys"]] == [active.kid]
    assert document["public_cert"]["kid"] == active.kid
    assert document["public_certs"][0]["cert"].startswith("-----BEGIN CERTIFICATE-----")
