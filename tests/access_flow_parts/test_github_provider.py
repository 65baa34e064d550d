"""The GitHub OAuth2 client against a small fake of GitHub's OAuth and REST endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge.access.idp import IdpLoginRefused, IdpUnavailable
from edge.access.idp.github import GithubProvider

CLIENT_ID = "gh-client"
CLIENT_SECRET = "gh-secret"
REDIRECT = "https://auth.example.com/cdn-cgi/access/callback"
VERIFIER = "v" * 43


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class GithubState:
    """What the fake knows: granted codes, users by token, and every request it saw."""

    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (challenge, token)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> account
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    foreign_next_link: str | None = None
    api_status: int = 200


def account(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "user": {"id": 4242, "login": "octocat", "name": "The Octocat"},
        "emails": [
            {"email": "octo@users.noreply.github.com", "primary": False, "verified": True},
            {"email": "octocat@corp.com", "primary": True, "verified": True},
        ],
        "orgs": [{"login": "acme"}, {"login": "widgets"}],
        "teams": [
            {"slug": "platform", "organization": {"login": "acme"}},
            {"slug": "sre", "organization": {"login": "acme"}},
            {"slug": "design", "organization": {"login": "widgets"}},
        ],
    }
    data.update(changes)
    return data


def make_handler(state: GithubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on ``state.requests`` instead."""

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            state.requests.append(("POST", self.path, self.headers.get("Authorization", "")))
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if self.path != "/login/oauth/access_token":
                self.reply(404, {})
                return
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                self.reply(200, {"error": "incorrect_client_credentials"})
                return
            granted = state.codes.pop(form.get("code", ""), None)
            if granted is None or challenge_of(form.get("code_verifier", "")) != granted[0]:
                self.reply(200, {"error": "bad_verification_code"})
                return
            self.reply(200, {"access_token": granted[1], "token_type": "bearer", "scope": "x"})

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            state.requests.append(("GET", self.path, auth))
            parts = urlsplit(self.path)
            user = state.users.get(auth.removeprefix("Bearer "))
            if user is None:
                self.reply(401, {"message": "Bad credentials"})
                return
            if state.api_status != 200:
                self.reply(state.api_status, {"message": "boom"})
                return
            page = int(parse_qs(parts.query).get("page", ["1"])[0])
            if parts.path == "/api/user":
                self.reply(200, user["user"])
            elif parts.path == "/api/user/emails":
                self.reply(200, user["emails"])
            elif parts.path == "/api/user/orgs":
                headers = {}
                if state.foreign_next_link:
                    headers["Link"] = f'<{state.foreign_next_link}>; rel="next"'
                self.reply(200, user["orgs"], headers)
            elif parts.path == "/api/user/teams":
                teams = user["teams"][(page - 1) * 2 : page * 2]
                headers = {}
                if page * 2 < len(user["teams"]):
                    host = self.headers["Host"]
                    headers["Link"] = (
                        f'<http://{host}/api/user/teams?per_page=2&page={page + 1}>; rel="next", '
                        f'<http://{host}/api/user/teams?per_page=2&page=2>; rel="last"'
                    )
                self.reply(200, teams, headers)
            else:
                self.reply(404, {})

    return Handler


@dataclass
class RunningFake:
    state: GithubState
    base: str


@pytest.fixture
def github() -> Iterator[RunningFake]:
    state = GithubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield RunningFake(state, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def provider(fake: RunningFake, secret: str = CLIENT_SECRET) -> GithubProvider:
    return GithubProvider(
        "github",
        CLIENT_ID,
        secret,
        clock=time.time,
        web_base=fake.base,
        api_base=f"{fake.base}/api",
    )


def grant(fake: RunningFake, code: str = "the-code", **changes: Any) -> str:
    token = f"token-for-{code}"
    fake.state.codes[code] = (challenge_of(VERIFIER), token)
    fake.state.users[token] = account(**changes)
    return code


async def exchange(gh: GithubProvider, code: str, verifier: str = VERIFIER) -> Any:
    return await gh.exchange(
        code=code, code_verifier=verifier, redirect_uri=REDIRECT, expected_nonce="unused"
    )


def test_authorization_url(github: RunningFake) -> None:
    url = provider(github).authorization_url(
        state="st", nonce="n", code_challenge=challenge_of(VERIFIER), redirect_uri=REDIRECT
    )
    assert url.startswith(f"{github.base}/login/oauth/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": "read:user user:email read:org",
        "state": "st",
        "code_challenge": challenge_of(VERIFIER),
        "code_challenge_method": "S256",
        "allow_signup": "false",
    }


async def test_exchange_reads_account_email_orgs_and_paginated_teams(github: RunningFake) -> None:
    identity = await exchange(provider(github), grant(github))
    assert identity.sub == "4242"
    assert identity.email == "octocat@corp.com"
    assert identity.email_verified is True
    assert identity.name == "The Octocat"
    assert identity.groups == ("acme", "widgets", "acme/platform", "acme/sre", "widgets/design")
    assert identity.idp == "github"
    team_pages = [path for _m, path, _a in github.state.requests if "/user/teams" in path]
    assert len(team_pages) == 2


async def test_the_access_token_goes_only_to_the_api_and_is_not_kept(github: RunningFake) -> None:
    identity = await exchange(provider(github), grant(github, "c1"))
    assert "token-for-c1" not in repr(identity)
    token_post = [r for r in github.state.requests if r[0] == "POST"]
    assert token_post == [("POST", "/login/oauth/access_token", "")]
    api_calls = [r for r in github.state.requests if r[0] == "GET"]
    assert api_calls
    assert all(
        path.startswith("/api/") and auth == "Bearer token-for-c1" for _m, path, auth in api_calls
    )


@pytest.mark.parametrize(
    ("emails", "expected"),
    [
        ([{"email": "a@corp.com", "primary": True, "verified": False}], ("a@corp.com", False)),
        ([{"email": "a@corp.com", "primary": False, "verified": True}], ("", False)),
        ([], ("", False)),
    ],
)
async def test_only_a_verified_primary_email_counts_as_verified(
    github: RunningFake, emails: list[dict[str, Any]], expected: tuple[str, bool]
) -> None:
    identity = await exchange(provider(github), grant(github, emails=emails))
    assert (identity.email, identity.email_verified) == expected


async def test_name_falls_back_to_login(github: RunningFake) -> None:
    code = grant(github, user={"id": 7, "login": "mona", "name": None})
    assert (await exchange(provider(github), code)).name == "mona"


async def test_unknown_code_is_refused(github: RunningFake) -> None:
    with pytest.raises(IdpLoginRefused) as caught:
        await exchange(provider(github), "never-granted")
    assert caught.value.reason == "code_rejected"
    assert caught.value.http_status == 400


async def test_code_used_twice_is_refused(github: RunningFake) -> None:
    gh = provider(github)
    code = grant(github)
    await exchange(gh, code)
    with pytest.raises(IdpLoginRefused, match="code_rejected"):
        await exchange(gh, code)


async def test_wrong_pkce_verifier_is_refused(github: RunningFake) -> None:
    with pytest.raises(IdpLoginRefused, match="code_rejected"):
        await exchange(provider(github), grant(github), verifier="w" * 43)


async def test_wrong_client_secret_is_a_provider_side_failure(github: RunningFake) -> None:
    with pytest.raises(IdpUnavailable) as caught:
        await exchange(provider(github, secret="wrong"), grant(github))
    assert caught.value.reason == "client_rejected"
    assert caught.value.http_status == 502
    assert caught.value.permanent


async def test_pagination_never_follows_links_to_other_hosts(github: RunningFake) -> None:
    elsewhere = GithubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(elsewhere))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        github.state.foreign_next_link = f"http://127.0.0.1:{server.server_address[1]}/api/steal"
        identity = await exchange(provider(github), grant(github))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert elsewhere.requests == []
    assert identity.groups[:2] == ("acme", "widgets")


async def test_api_errors_are_provider_failures(github: RunningFake) -> None:
    github.state.api_status = 500
    with pytest.raises(IdpUnavailable) as caught:
        await exchange(provider(github), grant(github))
    assert caught.value.reason == "provider_http_error"


async def test_unreachable_github_is_a_502() -> None:
    gh = GithubProvider(
        "github", CLIENT_ID, CLIENT_SECRET, clock=time.time, web_base="http://127.0.0.1:1"
    )
    with pytest.raises(IdpUnavailable) as caught:
        await exchange(gh, "code")
    assert caught.value.reason == "unreachable"
    assert not caught.value.permanent


def test_callback_checks(github: RunningFake) -> None:
    gh = provider(github)
    with pytest.raises(IdpLoginRefused, match="provider_refused: access_denied"):
        gh.check_callback({"error": "access_denied"})
    with pytest.raises(IdpLoginRefused, match="missing_code"):
        gh.check_callback({"state": "s"})
    assert gh.check_callback({"code": "abc", "state": "s"}) == "abc"
