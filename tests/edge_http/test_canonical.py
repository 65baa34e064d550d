"""The canonicaliser against the SECURITY.md rows for paths, bypass tricks and hosts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.canonical import (
    BadRequest,
    CanonicalTarget,
    HostPort,
    canonical_host,
    canonical_path,
    parse_host_header,
    path_matches_prefix,
    split_absolute_target,
)

# --- bypass-path tricks against a bypass rule for /public -----------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "matches_public"),
    [
        ("/public", "/public", True),
        ("/public/x", "/public/x", True),
        ("/public/../admin", "/admin", False),
        ("/public/./x", "/public/x", True),
        ("/public/%2e%2e/admin", "/admin", False),
        ("/public/%2E%2E/admin", "/admin", False),
        ("/public/.%2e/admin", "/admin", False),
        ("/admin?x=/public", "/admin", False),
        ("/admin;/public", "/admin;/public", False),
        ("/%70ublic", "/public", True),
        ("//public", "/public", True),
        ("/PUBLIC", "/PUBLIC", False),
        ("/publicity", "/publicity", False),
        ("/public;x", "/public;x", False),
        ("/admin/..", "/", False),
        ("/../../public", "/public", True),
    ],
)
def test_bypass_tricks_match_only_on_the_canonical_path(
    raw: str, path: str, matches_public: bool
) -> None:
    target = canonical_path(raw)
    assert target.path == path
    assert path_matches_prefix(target.path, "/public") is matches_public


@pytest.mark.parametrize(
    "raw",
    [
        "/admin#/public",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/%00",
        "/public%00/x",
        "/public/..;/admin",
        "/public/.;/x",
        "/public/%2e%2e;x/admin",
        "/public\\..\\admin",
    ],
)
def test_bypass_tricks_that_cannot_be_made_unambiguous_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        canonical_path(raw)


# --- path encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/", "/"),
        ("/a//b", "/a/b"),
        ("///a///", "/a/"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/%2e%2e/b", "/b"),
        ("/..", "/"),
        ("/a/../../..", "/"),
        ("/a%252Fb", "/a%252Fb"),
        ("/%252e%252e/x", "/%252e%252e/x"),
        ("/%7e%41", "/~A"),
        ("/%e2%82%ac", "/%E2%82%AC"),
        ("/a%20b", "/a%20b"),
        ("/a%3Fb", "/a%3Fb"),
        ("/a%23b", "/a%23b"),
        ("/a%25", "/a%25"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        ("/%5B%5D%7B%7D", "/%5B%5D%7B%7D"),
        ("/a%2Eb", "/a.b"),
    ],
)
def test_path_encoding_has_one_canonical_form(raw: str, path: str) -> None:
    assert canonical_path(raw).path == path


@pytest.mark.parametrize(
    "raw",
    [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%5cb",
        "/a\\b",
        "/%C0%AF",  # overlong '/'
        "/%C0%AE%C0%AE/x",  # overlong '..'
        "/%E0%80%AF",  # three-byte overlong '/'
        "/%ED%A0%80",  # UTF-16 surrogate
        "/%FF",
        "/%C3",  # truncated sequence
        "/%00",
        "/%0A",
        "/%0D%0A",
        "/%09",
        "/%7F",
        "/%C2%85",  # C1 control (NEL)
        "/%",
        "/%4",
        "/%zz",
        "/a b",
        "/a\tb",
        "/\u20ac",
        "*",
        "a/b",
        "",
    ],
)
def test_ambiguous_or_invalid_paths_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        canonical_path(raw)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/a%2Fb", "/a%2Fb"),
        ("/a%2fb/..", "/"),
        ("/a%5C..%5Cb", "/a%5C..%5Cb"),
        ("/a\\b", "/a%5Cb"),
        ("/%2F%2F", "/%2F%2F"),
    ],
)
def test_encoded_slashes_stay_encoded_when_the_app_opts_in(raw: str, path: str) -> None:
    assert canonical_path(raw, allow_encoded_slash=True).path == path


def test_query_is_kept_verbatim_and_separately() -> None:
    target = canonical_path("/a/../b?x=%2F..%2F&y=/public")
    assert target == CanonicalTarget("/b", "x=%2F..%2F&y=/public")
    assert target.target == "/b?x=%2F..%2F&y=/public"
    assert canonical_path("/b?").target == "/b?"
    assert canonical_path("/b").query is None


_PIECES = st.sampled_from(
    ["a", "B", ".", "..", "%2e", "%2E%2e", "", "%41", "%252F", ";", "x;y", "%e2%82%ac", "~", "%25"]
)


@given(st.lists(_PIECES, max_size=12))
def test_canonical_paths_are_fixed_points(pieces: list[str]) -> None:
    raw = "/" + "/".join(pieces)
    try:
        first = canonical_path(raw).path
    except BadRequest:
        return
    assert canonical_path(first).path == first
    assert "//" not in first
    segments = first.split("/")
    assert "." not in segments
    assert ".." not in segments


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/public", "/public", True),
        ("/public/", "/public", True),
        ("/public/x/y", "/public", True),
        ("/publicity", "/public", False),
        ("/public", "/public/", True),
        ("/public/x", "/public/", True),
        ("/pub", "/public", False),
        ("/anything", "/", True),
        ("/", "/", True),
        ("/a/b", "/a/b/c", False),
    ],
)
def test_prefix_matching_is_on_segment_boundaries(path: str, prefix: str, expected: bool) -> None:
    assert path_matches_prefix(path, prefix) is expected


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("APP.Example.COM.", "app.example.com", None),
        ("app.example.com", "app.example.com", None),
        ("app.example.com:8443", "app.example.com", 8443),
        ("App.Example.Com.:443", "app.example.com", 443),
        ("localhost", "localhost", None),
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("[::1]", "[::1]", None),
        ("[0:0:0:0:0:0:0:1]:8080", "[::1]", 8080),
        ("[2001:DB8::1]", "[2001:db8::1]", None),
        ("b\u00fccher.example", "xn--bcher-kva.example", None),
        ("B\u00dcCHER.example", "xn--bcher-kva.example", None),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example", None),
        ("under_score.example", "under_score.example", None),
        ("r3---sn-abc.example", "r3---sn-abc.example", None),
    ],
)
def test_hosts_have_one_canonical_form(raw: str, host: str, port: int | None) -> None:
    assert parse_host_header(raw) == HostPort(host, port)
    assert canonical_host(raw) == host


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " app.example.com",
        "app.example.com ",
        "app example.com",
        "app.example.com\x00",
        "app.example.com\r\nX: y",
        "app..example.com",
        ".app.example.com",
        "app.example.com..",
        "-app.example.com",
        "app-.example.com",
        "app.example.com:",
        "app.example.com:0",
        "app.example.com:65536",
        "app.example.com:+80",
        "app.example.com:8o",
        "app.example.com:80:80",
        "user@app.example.com",
        "evil.example@app.example.com",
        "app.example.com/path",
        "app.example.com\\x",
        "app.example.com?x",
        "app.example.com#x",
        "1.2.3",
        "01.2.3.4",
        "2130706433",
        "0x7f.0.0.1",
        "app.0x7f",
        "::1",
        "[::1",
        "[::1]x",
        "[fe80::1%25eth0]",
        "[not-an-ip]",
        "xn--zz.example",
        "xn--abc.example",
        "a" * 64 + ".example",
        ".".join(["a" * 60] * 5),
        "app\u200b.example",  # zero-width space
        "\u2025.example",
    ],
)
def test_bad_hosts_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_host_header(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://App.Example.com/x?y=1", ("http", "App.Example.com", "/x?y=1")),
        ("HTTPS://app.example.com", ("https", "app.example.com", "/")),
        ("http://app.example.com?q", ("http", "app.example.com", "/?q")),
        ("/x", None),
    ],
)
def test_absolute_form_targets_are_split(raw: str, expected: tuple[str, str, str] | None) -> None:
    assert split_absolute_target(raw) == expected


@pytest.mark.parametrize("raw", ["http:///x", "http://user@app.example.com/"])
def test_absolute_form_without_host_or_with_userinfo_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        split_absolute_target(raw)
