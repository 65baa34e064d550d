"""Sign-in pages: real links and forms, labelled and escaped, with a CSP that matches the style."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from edge.access.pages import (
    PAGE_HEADERS,
    IdpChoice,
    access_error_page,
    denied_page,
    logged_out_page,
    login_page,
    otp_code_page,
    otp_email_page,
)

HOSTILE = "<script>alert('x')</script>\"' onmouseover=\"alert(1)\" &amp; <img src=x onerror=y>"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]


@dataclass
class ParsedPage(HTMLParser):
    """Collects elements, text and the style block of a page."""

    elements: list[Element] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    style: str = ""
    _in_style: bool = False

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
        else:
            self.texts.append(data)

    def all(self, tag: str) -> list[Element]:
        return [element for element in self.elements if element.tag == tag]

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())


def parse(page: str) -> ParsedPage:
    parsed = ParsedPage()
    parsed.feed(page)
    parsed.close()
    return parsed


def assert_well_formed(page: str) -> ParsedPage:
    """One main, one h1, a language, no script, no event handlers, labelled inputs."""
    parsed = parse(page)
    assert page.startswith("<!doctype html>")
    assert parsed.all("html")[0].attrs["lang"] == "en"
    assert len(parsed.all("main")) == 1
    assert len(parsed.all("h1")) == 1
    assert parsed.all("script") == []
    assert parsed.all("img") == []
    for element in parsed.elements:
        assert not any(name.startswith("on") for name in element.attrs), element
    labels = {label.attrs.get("for") for label in parsed.all("label")}
    for field_ in parsed.all("input"):
        if field_.attrs.get("type") != "hidden":
            assert field_.attrs.get("id") in labels, field_
    return parsed


def test_login_page_lists_each_provider_as_a_real_link() -> None:
    page = login_page(
        "Grafana",
        [
            IdpChoice("corp", "Corp SSO", "/cdn-cgi/access/login?idp=corp&x=1"),
            IdpChoice("otp", "a one-time code", "https://auth.example.com/cdn-cgi/access/otp"),
        ],
    )
    parsed = assert_well_formed(page)
    links = parsed.all("a")
    assert [link.attrs["href"] for link in links] == [
        "/cdn-cgi/access/login?idp=corp&x=1",
        "https://auth.example.com/cdn-cgi/access/otp",
    ]
    assert "Sign in to Grafana" in parsed.text
    assert "Sign in with Corp SSO" in parsed.text


def test_otp_email_page_posts_with_a_csrf_token() -> None:
    page = otp_email_page(
        app_name="Grafana",
        action_url="/cdn-cgi/access/otp",
        csrf_token="csrf-123",
        email="a@corp.com",
        hidden={"login": "sealed-login"},
        error="Enter a valid e-mail address.",
    )
    parsed = assert_well_formed(page)
    [form] = parsed.all("form")
    assert form.attrs == {"method": "post", "action": "/cdn-cgi/access/otp"}
    fields = {f.attrs["name"]: f.attrs for f in parsed.all("input")}
    assert fields["csrf_token"]["value"] == "csrf-123"
    assert fields["login"]["value"] == "sealed-login"
    assert fields["email"]["type"] == "email"
    assert fields["email"]["value"] == "a@corp.com"
    assert "Enter a valid e-mail address." in parsed.text
    assert parsed.all("button")[0].attrs["type"] == "submit"


def test_otp_code_page_asks_for_the_code() -> None:
    page = otp_code_page(
        app_name="Grafana",
        action_url="/cdn-cgi/access/otp/verify",
        csrf_token="csrf-456",
        email="a@corp.com",
        hidden={"challenge": "ch-1"},
        restart_url="/cdn-cgi/access/otp",
    )
    parsed = assert_well_formed(page)
    fields = {f.attrs["name"]: f.attrs for f in parsed.all("input")}
    assert fields["csrf_token"]["value"] == "csrf-456"
    assert fields["challenge"]["value"] == "ch-1"
    assert fields["code"]["autocomplete"] == "one-time-code"
    assert fields["code"]["inputmode"] == "numeric"
    assert "a@corp.com" in parsed.text
    assert parsed.all("a")[0].attrs["href"] == "/cdn-cgi/access/otp"


def test_denied_page_says_who_where_why_and_offers_logout() -> None:
    page = denied_page(
        "Grafana", "mallory@corp.com", "no_policy_matched", "/cdn-cgi/access/logout", "req-9"
    )
    parsed = assert_well_formed(page)
    for expected in ("Grafana", "mallory@corp.com", "None of this application", "req-9"):
        assert expected in parsed.text
    assert [a.attrs["href"] for a in parsed.all("a")] == ["/cdn-cgi/access/logout"]
    assert not any(m.attrs.get("http-equiv") == "refresh" for m in parsed.all("meta"))


def test_denied_page_with_an_unknown_reason_still_reads_plainly() -> None:
    parsed = parse(denied_page("App", "", "some_new_reason", "/logout", "r"))
    assert "not allowed" in parsed.text
    assert "some_new_reason" in parsed.text
    assert "without an e-mail address" in parsed.text


def test_logged_out_and_error_pages() -> None:
    parsed = assert_well_formed(logged_out_page(login_url="https://app.example.com/"))
    assert "signed out" in parsed.text
    assert parsed.all("a")[0].attrs["href"] == "https://app.example.com/"
    assert parse(logged_out_page()).all("a") == []
    parsed = assert_well_formed(
        access_error_page(400, "Login expired", "Start again.", request_id="r-1")
    )
    assert "Login expired" in parsed.text
    assert "400" in parsed.text
    assert "r-1" in parsed.text


PAGES: list[Callable[[str], str]] = [
    lambda s: login_page(s, [IdpChoice(s, s, "/login")], notice=s),
    lambda s: otp_email_page(
        app_name=s, action_url="/otp", csrf_token=s, email=s, error=s, hidden={"x": s}
    ),
    lambda s: otp_code_page(
        app_name=s, action_url="/otp", csrf_token=s, email=s, error=s, hidden={s: s}
    ),
    lambda s: denied_page(s, s, s, "/logout", s),
    lambda s: access_error_page(500, s, s, request_id=s),
]


@pytest.mark.parametrize("render", PAGES)
def test_hostile_values_are_escaped_everywhere(render: Callable[[str], str]) -> None:
    page = render(HOSTILE)
    parsed = assert_well_formed(page)
    assert "<script>" not in page
    assert "<img" not in page
    assert 'onmouseover="' not in page
    assert HOSTILE in parsed.text or any(
        HOSTILE in element.attrs.values() for element in parsed.elements
    )


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "data:text/html,x", "//evil.com/", "/\\evil.com", " /x", "vbscript:x"],
)
def test_links_must_be_paths_or_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="page links"):
        login_page("App", [IdpChoice("a", "A", url)])
    with pytest.raises(ValueError, match="page links"):
        denied_page("App", "a@b.c", "x", url, "r")


def test_login_page_needs_a_provider() -> None:
    with pytest.raises(ValueError, match="at least one"):
        login_page("App", [])


def test_content_security_policy_allows_exactly_the_inline_style() -> None:
    headers = dict(PAGE_HEADERS)
    parsed = parse(logged_out_page())
    digest = base64.b64encode(hashlib.sha256(parsed.style.encode()).digest()).decode()
    policy = headers["Content-Security-Policy"]
    assert f"style-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src" not in policy
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"text/html; charset=utf-8", headers["Content-Type"])
