"""Open-redirect family: return URLs are rebuilt from checked parts or replaced by the default."""

from __future__ import annotations

import itertools
import random
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.access.redirects import is_loopback_callback, safe_return_url

SERVED = frozenset({"app.example.com", "auth.example.com", "xn--bcher-kva.example", "127.0.0.1"})
seen_hosts: list[str] = []


def served(host: str) -> bool:
    seen_hosts.append(host)
    return host in SERVED


def check(candidate: str) -> str:
    return safe_return_url(candidate, served_hosts=served)


def assert_safe(result: str, default: str = "/") -> None:
    """The invariant: the default, a single-slash path on this host, or a served absolute URL.

    Relative results are resolved by two independent URL parsers (urllib's and httpx's) and must
    stay on the current host; absolute results must name a served host for both of them.
    """
    assert all(0x21 <= ord(c) <= 0x7E for c in result), result
    if result == default:
        return
    if result.startswith("/"):
        assert not result.startswith("//")
        assert "\\" not in result
        assert not unquote(unquote(result)).startswith("//")
        base = "https://app.example.com/start/page"
        assert urlsplit(urljoin(base, result)).hostname == "app.example.com"
        assert httpx.URL(base).join(result).host == "app.example.com"
        return
    parts = urlsplit(result)
    assert parts.scheme in ("http", "https")
    assert "@" not in parts.netloc
    assert "\\" not in result
    assert parts.hostname in SERVED
    assert httpx.URL(result).raw_host.decode("ascii") in SERVED


# --- the named family from SECURITY.md ---------------------------------------------------------

REFUSED = [
    "//evil.com",
    "//evil.com/path",
    "/\\evil.com",
    "\\\\evil.com",
    "\\/evil.com",
    "/%2F/evil.com",
    "/%2f%2fevil.com",
    "/%252F/evil.com",
    "/%5Cevil.com",
    "/%09/evil.com",
    "/\t/evil.com",
    "/\r\n/evil.com",
    "/x\r\nSet-Cookie: a=b",
    "/x%0d%0aSet-Cookie:%20a=b",
    "https:evil.com",
    "https:/evil.com",
    "https:\\\\evil.com",
    "https:///evil.com",
    "https://app.example.com.evil.com/",
    "https://evil.com#.app.example.com",
    "https://evil.com?.app.example.com",
    "https://evil.com\\.app.example.com",
    "https://app.example.com@evil.com/",
    "https://app.example.com:443@evil.com/",
    "https://app.example.com\\@evil.com/",
    "https://app.example.com%2f@evil.com/",
    "https://app.example.com%2eevil.com/",
    "https://evil.com/app.example.com",
    "javascript:alert(1)",
    "JavaScript://app.example.com/%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://app.example.com/",
    "ws://app.example.com/",
    "https://\u0430pp.example.com/",  # Cyrillic a
    "https://app.\u0435\u0445ample.com/",  # Cyrillic e and x
    "https://app.example.com\uff0eevil.com/",  # full-width full stop
    "https://app\u3002example.com/",  # ideographic full stop
    "https://evil.com\u2044app.example.com/",  # fraction slash
    " https://app.example.com/",
    "\thttps://app.example.com/",
    "https://app.example.com /",
    "evil.com",
    "app.example.com/path",
    "app.example.com:443/path",
    "?next=/x",
    "#/x",
    "",
    "https://",
    "https://:443/",
    "https://app.example.com:99999/",
    "https://app.example.com:0/",
    "https://[::1%25eth0]/",
    "https://0x7f000001/",
    "https://2130706433/",
    "/" + "a" * 5000,
    "/%ff%fe",
    "/%c0%af%c0%afevil.com",
]


@pytest.mark.parametrize("candidate", REFUSED)
def test_unsafe_return_urls_fall_back_to_the_default(candidate: str) -> None:
    assert check(candidate) == "/"


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("/", "/"),
        ("/dashboard?tab=1#top", "/dashboard?tab=1#top"),
        ("/a b/<x>", "/a%20b/%3Cx%3E"),
        ("/caf\u00e9", "/caf%C3%A9"),
        ("https://app.example.com", "https://app.example.com/"),
        ("https://app.example.com/x?y=1", "https://app.example.com/x?y=1"),
        ("https://app.example.com?y=1", "https://app.example.com/?y=1"),
        ("HTTPS://APP.Example.COM./x", "https://app.example.com/x"),
        ("https://app.example.com.:8443/x", "https://app.example.com:8443/x"),
        ("http://127.0.0.1:8080/demo", "http://127.0.0.1:8080/demo"),
        ("https://b\u00fccher.example/", "https://xn--bcher-kva.example/"),
        (
            "https://auth.example.com/cdn-cgi/access/login",
            "https://auth.example.com/cdn-cgi/access/login",
        ),
    ],
)
def test_safe_return_urls_come_back_rebuilt(candidate: str, expected: str) -> None:
    assert check(candidate) == expected


def test_hosts_are_canonical_before_the_served_check() -> None:
    seen_hosts.clear()
    check("https://APP.EXAMPLE.COM./")
    check("https://B\u00dcCHER.example/")
    assert seen_hosts == ["app.example.com", "xn--bcher-kva.example"]


def test_custom_default_and_port_restriction() -> None:
    assert safe_return_url("//evil", served_hosts=served, default="/home") == "/home"
    allowed = safe_return_url(
        "https://app.example.com:8443/", served_hosts=served, allowed_ports={8443}
    )
    assert allowed == "https://app.example.com:8443/"
    refused = safe_return_url(
        "https://app.example.com:9999/", served_hosts=served, allowed_ports={8443}
    )
    assert refused == "/"


# --- a few hundred generated variants ---------------------------------------------------------

_SCHEMES = [
    "https://",
    "http://",
    "HtTpS://",
    "https:",
    "https:/",
    "https:\\\\",
    "https:/\\",
    "//",
    "/\\",
    "\\\\",
    "/",
    "",
    "javascript:",
    "data:,",
    "ftp://",
    " //",
    "\t//",
    "/%2f",
    "/%5c",
    "%2f%2f",
]
_USERINFO = ["", "user@", "app.example.com@", "user:pw@", "app.example.com:443@", "%40"]
_HOSTS = [
    "app.example.com",
    "APP.EXAMPLE.COM",
    "app.example.com.",
    "evil.com",
    "app.example.com.evil.com",
    "evil.com#.app.example.com",
    "evil.com?app.example.com",
    "\u0430pp.example.com",
    "app.example.com%2eevil.com",
    "evil.com\\app.example.com",
    "app.example.com\\@evil.com",
    "[::1]",
    "127.0.0.1",
    "xn--pp-8cd.example.com",
    "app.ex\u0430mple.com",
    "evil.com%00app.example.com",
    "app.example.com\u3002evil.com",
]
_PORTS = ["", ":443", ":8443", ":0", ":99999", ":x"]
_TAILS = [
    "",
    "/",
    "/x",
    "//evil.com",
    "/%2F%2Fevil.com",
    "/\\evil.com",
    "?next=//evil.com",
    "#frag",
    "/%0d%0aSet-Cookie:x",
    "/..%2f..%2fevil",
    "/%09/evil.com",
]


def _mangle(text: str, rng: random.Random) -> str:
    """Re-spell a URL the ways attackers do: encode, double-encode, inject whitespace, case."""
    choice = rng.randrange(6)
    if choice == 0 and text:
        position = rng.randrange(len(text))
        return text[:position] + rng.choice(["\t", "\n", "\r", "%09", "%0a", " "]) + text[position:]
    if choice == 1:
        return text.replace("/", rng.choice(["%2f", "%2F", "%252f", "\\"]), rng.randrange(1, 3))
    if choice == 2:
        return text.replace(".", rng.choice(["%2e", "\u3002", "\uff0e"]), 1)
    if choice == 3:
        return text.upper()
    return text


_GOOD = [
    "https://app.example.com/x?y=1",
    "https://auth.example.com/",
    "/dashboard",
    "https://app.example.com:8443/a/b",
    "/a?b=c#d",
    "http://127.0.0.1:8080/demo",
]


def _generated_variants() -> list[str]:
    """Attack shapes composed from parts, plus mangled spellings of URLs that are fine."""
    rng = random.Random(20240601)
    combos = list(itertools.product(_SCHEMES, _USERINFO, _HOSTS, _PORTS, _TAILS))
    composed = ["".join(parts) for parts in rng.sample(combos, 350)]
    mangled_good = [rng.choice(_GOOD) for _ in range(100)]
    return [_mangle(text, rng) for text in composed + mangled_good]


@pytest.mark.parametrize("candidate", _generated_variants())
def test_generated_variants_keep_the_invariant(candidate: str) -> None:
    assert_safe(check(candidate))


def test_generated_variants_include_both_outcomes() -> None:
    """The generator must exercise acceptance too, or the invariant would be checked vacuously."""
    results = [check(candidate) for candidate in _generated_variants()]
    assert sum(result.startswith("https://app.example.com") for result in results) >= 10
    assert sum(result.startswith("/") and result != "/" for result in results) >= 10
    assert sum(result == "/" for result in results) >= 200


_ALPHABET = st.sampled_from(
    [
        *list("/\\:@.%?#aAeE19 \t\r\n-_~"),
        "%2f",
        "%5c",
        "%2e",
        "%09",
        "%0a",
        "%25",
        "\u0430",
        "\u3002",
        "app.example.com",
        "evil.com",
        "https:",
        "//",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=14).map("".join))
def test_arbitrary_strings_keep_the_invariant(candidate: str) -> None:
    assert_safe(check(candidate))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["https://", "http://", "//", "/", ""]),
    st.sampled_from(["", "x@", "app.example.com@"]),
    st.sampled_from([*sorted(SERVED), "evil.com", "app.example.com.evil.com"]),
    st.text(alphabet="/\\%2fF.@#?:evil", max_size=12),
)
def test_composed_urls_keep_the_invariant(scheme: str, userinfo: str, host: str, tail: str) -> None:
    assert_safe(check(scheme + userinfo + host + tail))


# --- CLI loopback callbacks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:53682/callback",
        "http://localhost:8080/",
        "http://[::1]:9999/cb?x=1",
        "http://127.0.0.1:1",
    ],
)
def test_loopback_callbacks_are_accepted(url: str) -> None:
    assert is_loopback_callback(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:53682/callback",
        "http://127.0.0.1/callback",
        "http://127.0.0.2:8080/",
        "http://localhost.:8080/",
        "http://localhost.evil.com:8080/",
        "http://127.0.0.1.nip.io:8080/",
        "http://evil.com:8080/",
        "http://localhost:8080@evil.com/",
        "http://user@localhost:8080/",
        "http://localhost:8080\\@evil.com/",
        "http://localhost:0/",
        "http://localhost:65536/",
        "http://localhost:080/",
        "http://localhost:8080//evil.com",
        "http://localhost:8080/#frag",
        "http://localhost:8080/\r\nx",
        "http://LOCALHOST:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://0.0.0.0:8080/",
        "//localhost:8080/",
        "javascript:alert(1)",
        "",
    ],
)
def test_other_callbacks_are_refused(url: str) -> None:
    assert not is_loopback_callback(url)
