"""Ingress rule matching (cloudflared semantics) and the explanation text."""

from __future__ import annotations

import re

import pytest

from connector.errors import ConfigError
from connector.ingress import (
    HelloWorldService,
    HttpService,
    IngressRule,
    IngressTable,
    StatusService,
    TcpService,
    normalize_request_host,
    parse_rule_hostname,
    parse_service,
)


def rule(hostname: str | None, path: str | None, service: str) -> IngressRule:
    return IngressRule(parse_rule_hostname(hostname) if hostname else None,
                       re.compile(path) if path else None, parse_service(service))


TABLE = IngressTable([
    rule("app.example.com", None, "http://127.0.0.1:8000"),
    rule("*.example.com", "^/api/", "unix:/run/api.sock"),
    rule("*.example.com", None, "hello_world"),
    rule(None, "\\.php$", "http_status:403"),
    rule(None, None, "http_status:404"),
])


@pytest.mark.parametrize(
    ("host", "path", "index"),
    [
        ("app.example.com", "/", 0),
        ("APP.Example.COM", "/x", 0),  # case-insensitive
        ("app.example.com:8443", "/x", 0),  # port ignored
        ("app.example.com.", "/x", 0),  # trailing dot ignored
        ("api.example.com", "/api/v1", 1),  # wildcard + path regex
        ("a.b.example.com", "/api/v1", 1),  # wildcard matches any depth
        ("api.example.com", "/v1/api/", 2),  # path regex is searched, here anchored: no match
        ("app.example.com", "/api/v1", 0),  # first match wins
        ("example.com", "/", 4),  # *.example.com does not match the bare domain
        ("notexample.com", "/", 4),  # nor a name that only ends with the same letters
        ("other.test", "/index.php", 3),  # path-only rule, unanchored search
        ("other.test", "/index.php5", 4),
        ("[::1]:8080", "/", 4),
    ],
)
def test_match(host: str, path: str, index: int) -> None:
    matched_index, matched = TABLE.match(host, path)
    assert matched_index == index
    assert matched is TABLE.rules[index]


def test_star_hostname_is_a_catch_all() -> None:
    table = IngressTable([rule("*", None, "hello_world")])
    assert table.match("anything.test", "/")[0] == 0


@pytest.mark.parametrize(("host", "expected"), [
    ("Example.COM:443", "example.com"), ("example.com.", "example.com"),
    ("[::1]:80", "[::1]"), ("::1", "::1"),
])
def test_normalize_request_host(host: str, expected: str) -> None:
    assert normalize_request_host(host) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("https://app.example.com/x", "Matched rule #1: hostname=app.example.com, "
                                  "service=http://127.0.0.1:8000"),
    ("https://api.example.com/api/users?id=/x", "Matched rule #2: hostname=*.example.com, "
                                                "path=^/api/, service=unix:/run/api.sock"),
    ("other.test/", "Matched rule #5: catch-all, service=http_status:404"),
])
def test_explain(url: str, expected: str) -> None:
    assert TABLE.explain(url) == expected


@pytest.mark.parametrize(("text", "service"), [
    ("http://localhost:8000", HttpService("http://localhost:8000", False, "localhost", 8000)),
    ("https://origin.internal", HttpService("https://origin.internal", True,
                                            "origin.internal", 443)),
    ("http://[::1]:81/", HttpService("http://[::1]:81/", False, "::1", 81)),
    ("unix+tls:/run/s.sock", HttpService("unix+tls:/run/s.sock", True, "localhost", 0,
                                         "/run/s.sock")),
    ("tcp://db:5432", TcpService("tcp://db:5432", "db", 5432)),
    ("ssh://bastion", TcpService("ssh://bastion", "bastion", 22)),
    ("http_status:503", StatusService(503)),
    ("hello_world", HelloWorldService()),
])
def test_parse_service(text: str, service: object) -> None:
    assert parse_service(text) == service
    assert str(parse_service(text)) == text


@pytest.mark.parametrize("text", [
    "localhost:8000", "ftp://x", "http://", "http://x:99999", "http://u:p@x", "http://x/?q",
    "unix:", "http_status:abc", "tcp://x",
])
def test_bad_services(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text)[:6])):
        parse_service(text)


def test_table_needs_exactly_one_final_catch_all() -> None:
    with pytest.raises(ConfigError, match=r"^ingress\[0\]: only the last rule"):
        IngressTable([rule(None, None, "hello_world"), rule(None, None, "hello_world")])
    with pytest.raises(ConfigError, match=r"^ingress\[0\]: the last rule"):
        IngressTable([rule("a.example.com", None, "hello_world")])
    with pytest.raises(ConfigError, match=r"^ingress\[0\]: the last rule"):
        IngressTable([rule(None, "^/x", "hello_world")])


def test_single_rule_table_for_url_flag() -> None:
    table = IngressTable.single("http://127.0.0.1:3000")
    assert table.explain("https://x.test/") == (
        "Matched rule #1: catch-all, service=http://127.0.0.1:3000")
