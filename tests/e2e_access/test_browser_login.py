"""The login pages in a real browser: headless Chromium driven by Playwright.

The edge, connector, origin and the OpenID provider run in the test's trio run; the browser
runs in a worker thread (Playwright's synchronous API) and reaches every ``*.localhost`` name
through a resolver rule, exactly as a person's browser would reach a real deployment.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import trio
from access_flow.conftest import Corp, corp, start_oidc_provider
from access_flow.harness import AUTH, PREFIX
from access_flow.mail import SmtpSink

from edge.admin.api import ChangeEvent, ChangeKind

pytestmark = pytest.mark.e2e

__all__ = ["corp", "start_oidc_provider"]  # fixtures, imported so pytest finds them

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
]
PAGE_TIMEOUT_MS = 20_000
T = TypeVar("T")


def _require_browser() -> Any:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `.venv/bin/pip install playwright` "
                    "(the browser is Debian's chromium; never `playwright install`)")
    return sync_playwright


async def in_browser(script: Callable[[Any], T]) -> T:
    """Run ``script(browser)`` with a fresh headless Chromium in a worker thread."""
    sync_playwright = _require_browser()

    def run() -> T:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                return script(browser)
            finally:
                browser.close()

    return await trio.to_thread.run_sync(run)


def new_page(browser: Any) -> Any:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


def sign_in_at_provider(page: Any, issuer: str, login: str) -> None:
    """Fill the provider's login form, then accept its consent page, until we leave it."""
    for _ in range(4):
        if not page.url.startswith(issuer):
            return
        if page.locator('input[name="login"]').count():
            page.fill('input[name="login"]', login)
            page.fill('input[name="password"]', "any password")
        with page.expect_navigation():
            page.locator('button[type="submit"]').first.click()
    assert not page.url.startswith(issuer), page.url


def origin_answer(page: Any) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(page.locator("body").inner_text())
    return answer


async def test_login_sso_denial_and_logout_in_chromium(corp: Corp) -> None:
    stack, issuer = corp.stack, corp.provider.issuer
    app1 = stack.url("app1.localhost", "/dashboard?tab=2")
    app2 = stack.url("app2.localhost", "/")
    app3 = stack.url("app3.localhost", "/")

    def script(browser: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = new_page(browser)
        visited: list[str] = []
        page.on("request", lambda request: visited.append(request.url))
        page.goto(app1)
        assert page.url.startswith(issuer), page.url  # one IdP: no chooser page
        sign_in_at_provider(page, issuer, "alice")
        assert page.url == app1
        seen["app1"] = origin_answer(page)
        cookies = {c["name"]: c for c in page.context.cookies()}
        seen["app_cookie"] = cookies["CF_Authorization"]
        seen["session_cookie"] = cookies["CF_AccessSession"]

        visited.clear()
        page.goto(app2)
        assert page.url == app2
        seen["app2"] = origin_answer(page)
        seen["idp_requests_for_app2"] = [url for url in visited if url.startswith(issuer)]

        page.goto(stack.url("app1.localhost", f"{PREFIX}/logout"))
        seen["logout_heading"] = page.locator("h1").inner_text()
        visited.clear()
        page.goto(app2)
        sign_in_at_provider(page, issuer, "alice")
        # The provider still remembers alice (logging out of the gateway is not logging out
        # of the provider), so it may answer at once; but the edge had to ask it again.
        seen["idp_requests_after_logout"] = [url for url in visited if url.startswith(issuer)]
        seen["after_logout"] = origin_answer(page)

        bob = new_page(browser)
        bob.goto(app3)
        sign_in_at_provider(bob, issuer, "bob")
        seen["denied_url"] = bob.url
        seen["denied_heading"] = bob.locator("h1").inner_text()
        seen["denied_text"] = bob.locator("main").inner_text()
        with bob.expect_navigation():
            bob.get_by_role("link", name="Sign out and use another account").click()
        seen["bob_after_sign_out"] = bob.locator("h1").inner_text()
        return seen

    seen = await in_browser(script)
    claims = seen["app1"]["assertion"]["claims"]
    assert claims["email"] == "alice@corp.com"
    assert claims["aud"] == [corp.app1.aud]
    assert seen["app1"]["target"] == "/dashboard?tab=2"
    assert seen["app_cookie"]["domain"] == "app1.localhost"
    assert seen["app_cookie"]["httpOnly"] is True
    assert seen["app_cookie"]["sameSite"] == "Lax"
    assert seen["session_cookie"]["domain"] == AUTH
    assert seen["app2"]["assertion"]["claims"]["aud"] == [corp.app2.aud]
    assert seen["idp_requests_for_app2"] == []
    assert seen["logout_heading"] == "You are signed out"
    assert seen["idp_requests_after_logout"]
    after = seen["after_logout"]["assertion"]["claims"]
    assert after["identity_nonce"] != claims["identity_nonce"]
    assert urlsplit(seen["denied_url"]).hostname == AUTH
    assert seen["denied_heading"] == "You don't have access"
    for needle in ("three", "bob@corp.com", "no_policy_matched"):
        assert needle in seen["denied_text"]
    assert seen["bob_after_sign_out"] == "You are signed out"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


async def test_one_time_pin_from_a_real_mailbox_with_the_keyboard(
    corp: Corp, sink: SmtpSink
) -> None:
    stack = corp.stack
    await stack.add_idp({
        "name": "mail", "type": "otp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
        "smtp_from": "access@edge.test", "smtp_starttls": False,
    })
    store = stack.edge.state.store
    record = stack.apps["two"]
    await trio.to_thread.run_sync(
        store.replace_app, "two", replace(record.spec, idps=("corp", "mail"))
    )
    await stack.access.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name="two"))
    app2 = stack.url("app2.localhost", "/wiki")

    def script(browser: Any) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        page = new_page(browser)
        page.goto(app2)
        seen["chooser"] = page.locator("h1").inner_text()
        seen["choices"] = page.locator("ul.choices a").all_inner_texts()
        with page.expect_navigation():
            page.get_by_role("link", name="Sign in with mail").click()
        page.get_by_label("E-mail address").fill("kim@corp.com")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        seen["code_heading"] = page.locator("h1").inner_text()
        code = sink.code_for("kim@corp.com")
        page.get_by_label("One-time code").fill(code)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_url(app2)
        seen["answer"] = origin_answer(page)
        return seen

    seen = await in_browser(script)
    assert seen["chooser"] == "Sign in to two"
    assert seen["choices"] == ["Sign in with corp", "Sign in with mail"]
    assert seen["code_heading"] == "Enter your code"
    claims = seen["answer"]["assertion"]["claims"]
    assert claims["email"] == "kim@corp.com"
    assert claims["idp"] == "mail"
