"""Starts the real OpenID provider in ``tests/idp`` and signs users in at it without a browser.

Use from a test module or conftest::

    from idp.fixture import start_oidc_provider  # registers the fixture

    def test_login(start_oidc_provider, tmp_path):
        provider = start_oidc_provider(
            tmp_path,
            [{"client_id": "edge", "client_secret": "s3cret",
              "redirect_uris": ["https://auth.example.com/cdn-cgi/access/callback"]}],
            [{"sub": "alice", "email": "alice@corp.com", "email_verified": True,
              "name": "Alice", "groups": ["eng"]}],
        )
        ...  # provider.issuer is "http://127.0.0.1:PORT"

``sign_in_at_provider`` (sync ``httpx.Client``) and ``sign_in_at_provider_async``
(``httpx.AsyncClient``) walk the provider's login and consent pages from an authorization URL
to the relying party's redirect URI and return that URL (with ``code``, ``state`` and ``iss``).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple, NotRequired, TypedDict
from urllib.parse import urljoin

import httpx
import pytest

IDP_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 30.0
MAX_LOGIN_STEPS = 12
INSTALL_HINT = "run `make test` (which runs npm ci) or `cd tests/idp && npm ci`"


class OidcClient(TypedDict):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    token_endpoint_auth_method: NotRequired[str]


class OidcAccount(TypedDict):
    sub: str
    email: str
    email_verified: bool
    name: str
    groups: list[str]


@dataclass
class OidcProvider:
    issuer: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the provider wrote to stderr (its warnings and errors), for failure messages."""
        return self.log_path.read_text(errors="replace")


def _read_ready_line(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The provider's first stdout line, waiting on the pipe with an overall deadline."""
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                pytest.fail(
                    f"the test OpenID provider did not report its issuer within "
                    f"{STARTUP_TIMEOUT:.0f}s; its stderr:\n{log_path.read_text(errors='replace')}"
                )
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                process.wait()
                pytest.fail(
                    f"the test OpenID provider exited with status {process.returncode} before "
                    f"it was ready; its stderr:\n{log_path.read_text(errors='replace')}"
                )
            received += chunk
    return received.split(b"\n", 1)[0].decode()


def _stop(provider: OidcProvider) -> None:
    if provider.process.poll() is None:
        provider.process.terminate()
        try:
            provider.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            provider.process.kill()
            provider.process.wait()
    if provider.process.stdout is not None:
        provider.process.stdout.close()


def launch_oidc_provider(
    directory: Path, clients: list[OidcClient], accounts: list[OidcAccount]
) -> OidcProvider:
    """Start ``node server.mjs``; the caller must stop it (the fixture does)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            f"`node` is not installed (Debian: apt-get install nodejs npm); then {INSTALL_HINT}"
        )
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"tests/idp/node_modules is missing: {INSTALL_HINT}")
    config_path = directory / "oidc-provider-config.json"
    config_path.write_text(json.dumps({"clients": clients, "accounts": accounts}))
    log_path = directory / "oidc-provider.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [node, str(IDP_DIR / "server.mjs")],
            cwd=IDP_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env={**os.environ, "TEST_IDP_CONFIG_FILE": str(config_path)},
        )
    provider = OidcProvider(issuer="", process=process, log_path=log_path)
    try:
        line = _read_ready_line(process, log_path)
        provider.issuer = json.loads(line)["issuer"]
    except BaseException:
        _stop(provider)
        raise
    return provider


StartOidcProvider = Callable[[Path, list[OidcClient], list[OidcAccount]], OidcProvider]


@pytest.fixture
def start_oidc_provider() -> Iterator[StartOidcProvider]:
    """A factory: ``start_oidc_provider(tmp_path, clients, accounts) -> OidcProvider``."""
    started: list[OidcProvider] = []

    def start(
        directory: Path, clients: list[OidcClient], accounts: list[OidcAccount]
    ) -> OidcProvider:
        provider = launch_oidc_provider(directory, clients, accounts)
        started.append(provider)
        return provider

    yield start
    for provider in started:
        _stop(provider)


# --- driving the login pages ------------------------------------------------------------------


@dataclass
class _Form:
    action: str = ""
    method: str = "get"
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    """Collects the first form of a page with its named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.form: _Form | None = None
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.form is None:
            self.form = _Form(values.get("action", ""), values.get("method", "get").lower())
        elif tag == "input" and self.form is not None and not self._done and "name" in values:
            self.form.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._done = True


class LoginRefused(AssertionError):
    """The provider answered the login walk with something other than a page or a redirect."""


class PendingRequest(NamedTuple):
    """A request of the login walk; built by the caller's client so its cookies go along."""

    method: str
    url: str
    form: dict[str, str] | None = None


def next_login_request(
    response: httpx.Response, *, login: str, password: str, redirect_uri: str
) -> PendingRequest | httpx.URL:
    """The next request of the login walk, or the final redirect URL once it is reached.

    A redirect is followed unless it points at ``redirect_uri``; a page with a form (the login
    form, then the consent form) is submitted with the given login name filled in.
    """
    if response.is_redirect:
        target = urljoin(str(response.url), response.headers["location"])
        if target.startswith(redirect_uri):
            return httpx.URL(target)
        return PendingRequest("GET", target)
    if response.status_code != 200:
        raise LoginRefused(f"{response.status_code} from {response.url}: {response.text[:300]}")
    parser = _FormParser()
    parser.feed(response.text)
    form = parser.form
    if form is None:
        raise LoginRefused(f"no form at {response.url}: {response.text[:300]}")
    fields = dict(form.fields)
    if fields.get("prompt") == "login":
        fields.update(login=login, password=password)
    action = urljoin(str(response.url), form.action)
    if form.method != "post":
        raise LoginRefused(f"unexpected {form.method} form at {response.url}")
    return PendingRequest("POST", action, fields)


def sign_in_at_provider(
    client: httpx.Client,
    authorization_url: str,
    *,
    login: str,
    redirect_uri: str,
    password: str = "any password",
) -> httpx.URL:
    """Walk login and consent from ``authorization_url``; returns the redirect-URI URL."""
    step: PendingRequest | httpx.URL = PendingRequest("GET", authorization_url)
    for _ in range(MAX_LOGIN_STEPS):
        if isinstance(step, httpx.URL):
            return step
        request = client.build_request(step.method, step.url, data=step.form)
        response = client.send(request, follow_redirects=False)
        step = next_login_request(
            response, login=login, password=password, redirect_uri=redirect_uri
        )
    raise LoginRefused(f"login did not reach {redirect_uri} in {MAX_LOGIN_STEPS} steps")


async def sign_in_at_provider_async(
    client: httpx.AsyncClient,
    authorization_url: str,
    *,
    login: str,
    redirect_uri: str,
    password: str = "any password",
) -> httpx.URL:
    """``sign_in_at_provider`` for async tests."""
    step: PendingRequest | httpx.URL = PendingRequest("GET", authorization_url)
    for _ in range(MAX_LOGIN_STEPS):
        if isinstance(step, httpx.URL):
            return step
        request = client.build_request(step.method, step.url, data=step.form)
        response = await client.send(request, follow_redirects=False)
        step = next_login_request(
            response, login=login, password=password, redirect_uri=redirect_uri
        )
    raise LoginRefused(f"login did not reach {redirect_uri} in {MAX_LOGIN_STEPS} steps")
