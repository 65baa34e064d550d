"""Error pages: every status renders, everything interpolated is escaped, JSON when asked."""

from __future__ import annotations

import json

import pytest

from edge.pages import PAGES, page_for, render_error, wants_json


@pytest.mark.parametrize("code", sorted(PAGES))
def test_every_page_renders_html_with_its_title_host_and_request_id(code: str) -> None:
    page = PAGES[code]
    rendered = render_error(page.status, code=code, host="app.example.com", request_id="r-123")
    text = rendered.body.decode()
    assert rendered.content_type == b"text/html; charset=utf-8"
    assert f"<title>{page.status} {page.title}</title>".replace("'", "&#x27;") in text
    assert page.explanation.replace("'", "&#x27;") in text
    assert "app.example.com" in text
    assert "r-123" in text


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (403, "forbidden"),
        (404, "unknown_host"),
        (408, "request_timeout"),
        (413, "payload_too_large"),
        (421, "misdirected_request"),
        (431, "headers_too_large"),
        (500, "internal_error"),
        (502, "origin_unreachable"),
        (503, "service_unavailable"),
        (504, "origin_timeout"),
    ],
)
def test_each_status_has_a_default_page(status: int, code: str) -> None:
    assert page_for(status).code == code
    assert page_for(status).status == status


def test_specific_pages_share_a_status() -> None:
    assert page_for(502, "tunnel_offline").title == "Tunnel offline"
    assert page_for(502, "no_such_page").code == "origin_unreachable"
    assert page_for(418).status == 418


def test_tunnel_offline_page_names_the_tunnel() -> None:
    text = render_error(502, code="tunnel_offline", tunnel="grafana-prod").body.decode()
    assert "Tunnel offline" in text
    assert "grafana-prod" in text


def test_everything_interpolated_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    text = render_error(
        404, title=evil, detail=evil, host=evil, request_id=evil, tunnel=evil
    ).body.decode()
    assert "<script>" not in text
    # title (twice: <title> and <h1>), detail, host, request id, tunnel
    assert text.count("&lt;script&gt;") == 6


def test_json_variant_has_the_documented_fields() -> None:
    rendered = render_error(
        504, detail="The origin did not answer.", request_id="r-9", as_json=True
    )
    assert rendered.content_type == b"application/json"
    assert json.loads(rendered.body) == {
        "error": "origin_timeout",
        "status": 504,
        "message": "The origin did not answer.",
        "request_id": "r-9",
    }


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        (b"", False),
        (b"*/*", False),
        (b"application/json", True),
        (b"application/problem+json", True),
        (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        (b"application/json, text/html;q=0.5", True),
        (b"text/html, application/json", False),
        (b"application/json;q=0.1, text/html;q=0.9", False),
        (b"application/json;q=0", False),
        (b"application/json;q=abc", False),
    ],
)
def test_json_is_chosen_only_when_preferred(accept: bytes | None, expected: bool) -> None:
    assert wants_json(accept) is expected
