"""Open redirects: every return-URL parameter of the real endpoints, a few hundred variants.

Whatever is asked for, a browser may only ever be sent to a host the edge serves. Each variant
is checked the way a browser would read the ``Location`` (resolved against the current URL),
and the location must also be free of anything a second parser could read differently.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import PinDeployment
from .harness import AUTH, PREFIX, location, new_visitor, query_of

pytestmark = pytest.mark.e2e

EVIL_HOSTS = [
    "evil.com",
    "evil.tld",
    "app1.localhost.evil.tld",
    "evilapp1.localhost",
    "app1.localhost-evil.com",
    "xn--pple-43d.com",
    "\u0430pp1.localhost",  # Cyrillic a
    "app1\u3002localhost",  # ideographic full stop
    "127.0.0.1",
    "[::1]",
    "EVIL.COM.",
    "localhost",
]
TEMPLATES = [
    "//{h}",
    "///{h}",
    "/\\{h}",
    "\\\\{h}",
    "/%2F/{h}",
    "/%2f%2f{h}",
    "/%252F/{h}",
    "/%09/{h}",
    "/%0D%0A/{h}",
    "/%5C{h}",
    "/.//{h}",
    "https:{h}",
    "https:/{h}",
    "https:\\\\{h}",
    "http://{h}",
    "https://{h}",
    "HTTPS://{h}/",
    "https://{h}:443/x",
    "https://app1.localhost.{h}",
    "https://{h}#.app1.localhost",
    "https://{h}?.app1.localhost",
    "https://app1.localhost@{h}",
    "https://app1.localhost%40{h}",
    "https://{h}\\@app1.localhost",
    "https://{h}%2F@app1.localhost",
    "javascript:alert(1)//{h}",
    "data:text/html,<script>location='//{h}'</script>",
    " //{h}",
    "\t//{h}",
    "/\r\nLocation: https://{h}",
    "ftp://{h}",
    "//{h}%2F..",
]
FIXED = [
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    "data:,hello",
    "vbscript:msgbox(1)",
    "/%00//evil.com",
    "\x00//evil.com",
    "//",
    "/" + "a" * 5000,
]
VARIANTS = sorted({t.format(h=h) for t, h in itertools.product(TEMPLATES, EVIL_HOSTS)} | set(FIXED))
SERVED = {"app1.localhost", "app2.localhost", "app3.localhost", "open.localhost", AUTH}


def test_the_family_is_large() -> None:
    assert len(VARIANTS) >= 300


def assert_safe(current: str, target: str, variant: str) -> None:
    assert all(ord(c) > 0x20 and c not in "\\\x7f" for c in target), (variant, target)
    resolved = httpx.URL(current).join(target)
    host = resolved.host
    assert host in SERVED, f"{variant!r} led to {target!r}"
    assert resolved.scheme in ("http", "https"), (variant, target)
    assert "@" not in urlsplit(target).netloc, (variant, target)


async def sign_in(pin: PinDeployment, visitor: httpx.AsyncClient) -> None:
    answer = await pin.stack.otp_login(
        visitor, pin.inbox, pin.stack.url("app1.localhost"), "rita@corp.com"
    )
    assert answer.status_code == 200


async def test_login_never_hands_off_to_a_foreign_host(pin: PinDeployment) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        await sign_in(pin, visitor)
        for variant in VARIANTS:
            login = stack.url(AUTH, f"{PREFIX}/login")
            answer = await visitor.get(login, params={"app": pin.app.aud, "redirect_url": variant})
            handoff = location(answer)
            assert urlsplit(handoff).hostname == "app1.localhost", (variant, handoff)
            final = location(await visitor.get(handoff))
            assert_safe(handoff, final, variant)
            assert urlsplit(final).hostname == "app1.localhost", (variant, final)


async def test_login_on_an_app_host_keeps_the_return_url_on_served_hosts(
    pin: PinDeployment,
) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        for variant in VARIANTS:
            here = stack.url("app1.localhost", f"{PREFIX}/login")
            target = location(await visitor.get(here, params={"redirect_url": variant}))
            assert urlsplit(target).hostname == AUTH
            assert_safe(target, query_of(target)["redirect_url"], variant)


async def test_logout_only_continues_to_served_hosts(pin: PinDeployment) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        for variant in VARIANTS:
            url = stack.url(AUTH, f"{PREFIX}/logout")
            answer = await visitor.get(url, params={"redirect_url": variant})
            if answer.status_code == 302:
                assert_safe(url, answer.headers["location"], variant)
            else:
                assert answer.status_code == 200
                assert "signed out" in answer.text
            on_app = stack.url("app1.localhost", f"{PREFIX}/logout")
            to_auth = location(await visitor.get(on_app, params={"redirect_url": variant}))
            assert urlsplit(to_auth).hostname == AUTH
            nested = query_of(to_auth).get("redirect_url")
            if nested is not None:
                assert_safe(to_auth, nested, variant)


@pytest.mark.parametrize("variant", ["//evil.com", "https://evil.com/", "/\\evil.com"])
async def test_authorized_ignores_return_urls_in_its_query(
    pin: PinDeployment, variant: str
) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        await sign_in(pin, visitor)
        original = stack.url("app1.localhost", "/kept?x=1")
        login = stack.url(AUTH, f"{PREFIX}/login")
        params = {"app": pin.app.aud, "redirect_url": original}
        handoff = location(await visitor.get(login, params=params))
        tampered = httpx.URL(handoff).copy_merge_params({"redirect_url": variant})
        assert location(await visitor.get(tampered)) == original
