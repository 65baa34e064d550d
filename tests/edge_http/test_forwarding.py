"""Header hygiene: hop-by-hop, Connection-nominated, forwarded and spoofed identity headers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from edge.forwarding import (
    FORWARDING_HEADERS,
    CleanedHeaders,
    clean_request_headers,
    effective_client_ip,
    normalise_header_name,
    strip_headers,
)

PEER = "203.0.113.9"
TRUSTED = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("10.0.0.0/8"))

Headers = list[tuple[bytes, bytes]]


def clean(
    headers: Headers, *, peer: str = PEER, trusted: bool = False, method: str = "GET"
) -> CleanedHeaders:
    return clean_request_headers(
        [(b"Host", b"app.example.com"), *headers],
        method=method,
        host_value=b"app.example.com",
        peer_ip=peer,
        scheme="https",
        trusted_proxies=TRUSTED if trusted else (),
    )


def names(headers: Headers) -> list[bytes]:
    return [normalise_header_name(n) for n, _ in headers]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if normalise_header_name(n) == name]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        (b"X-Forwarded-Email", b"x-forwarded-email"),
        (b"x_forwarded_email", b"x-forwarded-email"),
        (b"X_FORWARDED-Email", b"x-forwarded-email"),
        (b"Cf-Access-Jwt-Assertion", b"cf-access-jwt-assertion"),
        (b" Remote_User ", b"remote-user"),
    ],
)
def test_names_are_normalised_for_comparison(raw: bytes, normalised: bytes) -> None:
    assert normalise_header_name(raw) == normalised


IDENTITY = [
    b"Cf-Access-Jwt-Assertion",
    b"Cf-Access-Authenticated-User-Email",
    b"X-Forwarded-Email",
    b"X-Forwarded-User",
    b"Remote-User",
]


@pytest.mark.parametrize(
    "spelling", [lambda n: n, bytes.lower, bytes.upper, lambda n: n.replace(b"-", b"_")]
)
@pytest.mark.parametrize("identity", IDENTITY)
def test_spoofed_identity_headers_are_stripped_in_every_spelling(
    spelling: Callable[[bytes], bytes], identity: bytes
) -> None:
    sent = spelling(identity)
    headers = [(b"Accept", b"*/*"), (sent, b"admin@corp.example"), (sent, b"dup"), (b"X-App", b"1")]
    stripped = strip_headers(headers, IDENTITY)
    assert stripped == [(b"Accept", b"*/*"), (b"X-App", b"1")]


@pytest.mark.parametrize(
    "hop",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Keep_Alive",
        b"proxy_connection",
    ],
)
def test_hop_by_hop_headers_are_removed(hop: bytes) -> None:
    cleaned = clean([(hop, b"x"), (b"X-App", b"1")])
    assert normalise_header_name(hop) not in names(cleaned.headers)
    assert (b"X-App", b"1") in cleaned.headers


def test_headers_nominated_by_connection_are_removed_but_not_host_or_length() -> None:
    cleaned = clean(
        [
            (b"Connection", b"X-Custom, x_other, Host, Content-Length"),
            (b"X-Custom", b"1"),
            (b"X-Other", b"2"),
            (b"Content-Length", b"3"),
            (b"X-Kept", b"4"),
        ],
        method="POST",
    )
    got = names(cleaned.headers)
    assert b"x-custom" not in got
    assert b"x-other" not in got
    assert b"connection" not in got
    assert values(cleaned.headers, b"host") == [b"app.example.com"]
    assert values(cleaned.headers, b"content-length") == [b"3"]
    assert values(cleaned.headers, b"x-kept") == [b"4"]


def test_connection_cannot_remove_headers_the_edge_injects_later() -> None:
    """Removal runs on the client's headers; the edge's own are added to the cleaned list."""
    cleaned = clean(
        [
            (b"Connection", b"Cf-Access-Jwt-Assertion, X-Forwarded-Email, X-Forwarded-For"),
            (b"X-Forwarded-Email", b"victim@corp.example"),
        ]
    )
    # The Connection header itself never travels on: nothing downstream can act on it.
    assert b"connection" not in names(cleaned.headers)
    assert b"x-forwarded-email" not in names(cleaned.headers)
    # The edge's own forwarding headers survive a client's nomination.
    assert values(cleaned.headers, b"x-forwarded-for") == [PEER.encode()]
    injected = [
        *strip_headers(cleaned.headers, IDENTITY),
        (b"Cf-Access-Jwt-Assertion", b"edge-token"),
        (b"X-Forwarded-Email", b"user@corp.example"),
    ]
    assert values(injected, b"cf-access-jwt-assertion") == [b"edge-token"]
    assert values(injected, b"x-forwarded-email") == [b"user@corp.example"]


def _underscored(name: bytes) -> bytes:
    return name.replace(b"-", b"_")


@pytest.mark.parametrize(
    "name", sorted(FORWARDING_HEADERS) + [_underscored(n) for n in sorted(FORWARDING_HEADERS)]
)
def test_forwarding_headers_from_untrusted_peers_are_ignored(name: bytes) -> None:
    cleaned = clean([(name, b"198.51.100.7"), (b"X-App", b"1")])
    assert values(cleaned.headers, b"x-forwarded-for") == [PEER.encode()]
    assert values(cleaned.headers, b"x-forwarded-proto") == [b"https"]
    assert cleaned.client_ip == PEER
    others = [n for n in names(cleaned.headers) if n in FORWARDING_HEADERS]
    assert sorted(others) == [b"x-forwarded-for", b"x-forwarded-proto"]


def test_forwarding_headers_from_trusted_peers_are_honoured_and_appended_to() -> None:
    cleaned = clean(
        [
            (b"X-Forwarded-For", b"198.51.100.7, 10.1.2.3"),
            (b"X-Forwarded-Proto", b"http"),
            (b"X-Forwarded-Host", b"public.example"),
            (b"Forwarded", b"for=198.51.100.7"),
        ],
        trusted=True,
    )
    assert values(cleaned.headers, b"x-forwarded-for") == [
        b"198.51.100.7, 10.1.2.3, " + PEER.encode()
    ]
    assert values(cleaned.headers, b"x-forwarded-proto") == [b"http"]
    assert values(cleaned.headers, b"x-forwarded-host") == [b"public.example"]
    assert values(cleaned.headers, b"forwarded") == [b"for=198.51.100.7"]
    assert cleaned.client_ip == "198.51.100.7"
    assert cleaned.scheme == "http"


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        ([], PEER),
        (["198.51.100.7"], "198.51.100.7"),
        (["198.51.100.7", "10.0.0.5"], "198.51.100.7"),
        (["192.0.2.1", "198.51.100.7", "10.0.0.5"], "198.51.100.7"),
        (["garbage", "10.0.0.5"], "10.0.0.5"),
        (["10.0.0.4", "10.0.0.5"], "10.0.0.4"),
        (["198.51.100.7:5555"], "198.51.100.7"),
        (["[2001:db8::7]:443"], "2001:db8::7"),
    ],
)
def test_effective_client_ip_walks_past_trusted_hops_only(chain: list[str], expected: str) -> None:
    assert effective_client_ip(PEER, chain, TRUSTED) == expected


def test_untrusted_peer_is_always_the_client() -> None:
    assert effective_client_ip("192.0.2.50", ["198.51.100.7"], TRUSTED) == "192.0.2.50"


def test_websocket_upgrade_keeps_upgrade_and_a_clean_connection_header() -> None:
    cleaned = clean(
        [
            (b"Connection", b"keep-alive, Upgrade, X-Secret"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"X-Secret", b"1"),
        ]
    )
    assert cleaned.is_websocket_upgrade
    assert values(cleaned.headers, b"upgrade") == [b"websocket"]
    assert values(cleaned.headers, b"connection") == [b"Upgrade"]
    assert b"x-secret" not in names(cleaned.headers)
    assert b"sec-websocket-key" in names(cleaned.headers)


def test_other_upgrades_are_not_forwarded() -> None:
    cleaned = clean([(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")])
    assert not cleaned.is_websocket_upgrade
    assert b"upgrade" not in names(cleaned.headers)
    assert b"connection" not in names(cleaned.headers)


@pytest.mark.parametrize("name", [b"Content_Length", b"Transfer_Encoding", b"content_length"])
def test_underscore_spellings_of_framing_headers_are_dropped(name: bytes) -> None:
    cleaned = clean([(name, b"5"), (b"X_Custom_Header", b"kept")], method="POST")
    assert name not in [n for n, _ in cleaned.headers]
    assert (b"X_Custom_Header", b"kept") in cleaned.headers
    assert values(cleaned.headers, b"host") == [b"app.example.com"]


def test_a_header_list_seen_before_is_cleaned_alike_per_peer_and_unhashable_ones_still_work(
) -> None:
    from edge import forwarding

    headers: Headers = [(b"Accept", b"*/*"), (b"X-Forwarded-For", b"198.51.100.1")]
    first = clean(headers)
    assert clean(list(headers)) is first  # looked up, not worked out again
    other_peer = clean(headers, peer="192.0.2.44")
    assert values(other_peer.headers, b"x-forwarded-for") == [b"192.0.2.44"]
    assert values(first.headers, b"x-forwarded-for") == [PEER.encode()]
    # A bytearray cannot key the table: cleaned all the same, never remembered.
    before = len(forwarding._CLEANED)
    unhashable = clean([(b"Accept", bytearray(b"text/html"))])
    assert values(unhashable.headers, b"accept") == [bytearray(b"text/html")]
    assert len(forwarding._CLEANED) == before
