"""Header hygiene between a client and the origin: what the edge removes, trusts and adds.

Every decision compares *normalised* names (lower-case, ``_`` read as ``-``), because origins
built on CGI, WSGI or ASGI fold ``X_Forwarded_For`` and ``X-Forwarded-For`` into one variable:
a header the edge removes under one spelling must not slip through under the other.

Order matters and is fixed here:

1. hop-by-hop headers go (``Connection``, ``Keep-Alive``, ``TE``...), and so does every header
   the client *named* in ``Connection``; this runs on the client's headers only, so a client can
   remove its own headers but never one the edge adds later (identity headers are injected by
   the Access layer after this step, on the already-cleaned list);
2. forwarding headers (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``X-Original-URL``...)
   go unless the peer is a trusted proxy;
3. the edge adds its own ``X-Forwarded-For`` (appended to a trusted chain) and
   ``X-Forwarded-Proto``.

Header names containing ``_`` are allowed (they are valid tokens and some APIs use them), but
an underscore spelling of ``Host``, ``Content-Length`` or ``Transfer-Encoding`` is dropped: an
origin that folds ``_`` into ``-`` could otherwise be made to see a second framing header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tunnel.bounded_memo import BoundedMemo

__all__ = [
    "FORWARDING_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "CleanedHeaders",
    "IPNetwork",
    "clean_request_headers",
    "effective_client_ip",
    "header_tokens",
    "is_trusted_peer",
    "normalise_header_name",
    "normalised_names",
    "strip_headers",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
    }
)

# Names a client may not remove by listing them in Connection: routing and framing depend on
# them, and the origin must see the same request the edge routed.
_NOT_REMOVABLE = frozenset({b"host", b"content-length"})
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})


def normalise_header_name(name: bytes) -> bytes:
    """Lower-case and read ``_`` as ``-``: the spelling every security comparison uses."""
    cacheable = type(name) is bytes and len(name) <= _NORMALISED_NAME_MAX
    normalised = _NORMALISED.get(name) if cacheable else None
    if normalised is None:
        normalised = bytes(name).strip().lower().replace(b"_", b"-")
        if cacheable and len(_NORMALISED) < _NORMALISED_MAX:
            _NORMALISED[name] = normalised
    return normalised


# Every request normalises every header name, and names repeat: the spellings seen first are
# remembered, up to a bound that a client sending made-up names cannot push past.
_NORMALISED: dict[bytes, bytes] = {}
_NORMALISED_MAX = 2048
_NORMALISED_NAME_MAX = 64


def normalised_names(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The normalised names of ``headers`` in order; a name seen before costs one C lookup."""
    known = _NORMALISED.get
    return [known(name) or normalise_header_name(name) for name, _ in headers]


def strip_headers(
    headers: Iterable[tuple[bytes, bytes]], names: Iterable[bytes]
) -> list[tuple[bytes, bytes]]:
    """Remove every header whose normalised name is one of ``names`` (also normalised)."""
    drop = {normalise_header_name(name) for name in names}
    return [(n, v) for n, v in headers if normalise_header_name(n) not in drop]


def header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every header named ``name``, normalised like names."""
    wanted = normalise_header_name(name)
    tokens: set[bytes] = set()
    for header, value in headers:
        if normalise_header_name(header) == wanted:
            tokens.update(_value_tokens(value))
    return tokens


def _value_tokens(value: bytes) -> list[bytes]:
    return [normalise_header_name(t) for t in value.split(b",") if t.strip()]


def is_trusted_peer(ip: str, trusted_proxies: Sequence[IPNetwork]) -> bool:
    if not trusted_proxies:
        return False
    address = _parse_ip(ip)
    return address is not None and any(address in network for network in trusted_proxies)


def effective_client_ip(
    peer_ip: str, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> str:
    """The client address: walk the forwarded chain right to left past trusted proxies.

    The first hop that is not trusted is the client; an unparsable entry ends the walk at the
    last trustworthy address, so garbage in the header never becomes the client address.
    """
    current = peer_ip
    if not is_trusted_peer(peer_ip, trusted_proxies):
        return peer_ip
    for entry in reversed(forwarded_for):
        address = _parse_ip(entry)
        if address is None:
            return current
        current = str(address)
        if not any(address in network for network in trusted_proxies):
            return current
    return current


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class CleanedHeaders:
    """The client's headers after hygiene, plus what the edge learned from them."""

    headers: list[tuple[bytes, bytes]]
    client_ip: str
    scheme: str
    is_websocket_upgrade: bool
    connection_tokens: frozenset[bytes] = frozenset()
    """The client's ``Connection`` tokens, normalised (``close``, ``upgrade``, header names)."""


def clean_request_headers(
    raw_headers: Sequence[tuple[bytes, bytes]],
    *,
    method: str,
    host_value: bytes,
    peer_ip: str,
    scheme: str,
    trusted_proxies: Sequence[IPNetwork],
) -> CleanedHeaders:
    """Apply the hygiene steps of the module docstring; ``host_value`` replaces ``Host``.

    A client repeats its requests' headers (an API client, a poller, a page's assets): the
    result for a header list seen before from the same peer is looked up, not worked out again.
    It may be shared, so copy ``headers`` before changing it."""
    key = (tuple(raw_headers), method, host_value, peer_ip, scheme, tuple(trusted_proxies))
    try:
        cleaned = _CLEANED.get(key)
    except TypeError:  # a bytearray in a header: not hashable (``remember`` skips it too)
        cleaned = None
    if cleaned is None:
        cleaned = _clean_request_headers(
            raw_headers, method=method, host_value=host_value, peer_ip=peer_ip, scheme=scheme,
            trusted_proxies=trusted_proxies,
        )
        _CLEANED.remember(key, cleaned, sum(len(name) + len(value) for name, value in raw_headers))
    return cleaned


# Bounded in entries and in the size of a header list kept; a full table starts over.
_CLEANED_MAX = 1024
_CLEANED_HEADERS_MAX = 8192
_CLEANED: BoundedMemo[tuple[object, ...], CleanedHeaders] = BoundedMemo(
    _CLEANED_MAX, _CLEANED_HEADERS_MAX
)


def _clean_request_headers(
    raw_headers: Sequence[tuple[bytes, bytes]],
    *,
    method: str,
    host_value: bytes,
    peer_ip: str,
    scheme: str,
    trusted_proxies: Sequence[IPNetwork],
) -> CleanedHeaders:
    trusted = is_trusted_peer(peer_ip, trusted_proxies)
    # Every name is normalised once; the first pass reads the Connection and Upgrade tokens
    # the second one filters by.
    names = normalised_names(raw_headers)
    connection_tokens: set[bytes] = set()
    upgrade_tokens: set[bytes] = set()
    for normalised, (_, value) in zip(names, raw_headers, strict=True):
        if normalised == b"connection":
            connection_tokens.update(_value_tokens(value))
        elif normalised == b"upgrade":
            upgrade_tokens.update(_value_tokens(value))
    websocket = (
        method == "GET" and b"upgrade" in connection_tokens and b"websocket" in upgrade_tokens
    )
    removable = connection_tokens - _NOT_REMOVABLE

    kept: list[tuple[bytes, bytes]] = []
    forwarded_for: list[str] = []
    forwarded_proto: str | None = None
    for normalised, (name, value) in zip(names, raw_headers, strict=True):
        if normalised == b"host":
            if b"_" not in name:
                kept.append((name, host_value))
            continue
        if b"_" in name and normalised in _FRAMING:
            continue
        if normalised == b"upgrade" and websocket:
            kept.append((name, value))
            continue
        if normalised in HOP_BY_HOP_HEADERS or normalised in removable:
            continue
        if normalised in FORWARDING_HEADERS:
            if not trusted:
                continue
            if normalised == b"x-forwarded-for":
                forwarded_for.extend(
                    p.strip() for p in value.decode("latin-1").split(",") if p.strip()
                )
                continue
            if normalised == b"x-forwarded-proto":
                if forwarded_proto is None:
                    first = value.decode("latin-1").split(",")[0].strip().lower()
                    forwarded_proto = first if first in ("http", "https") else None
                continue
        kept.append((name, value))

    if websocket:
        kept.append((b"Connection", b"Upgrade"))
    effective_scheme = forwarded_proto or scheme
    chain = [*forwarded_for, peer_ip]
    kept.append((b"X-Forwarded-For", ", ".join(chain).encode("latin-1")))
    kept.append((b"X-Forwarded-Proto", effective_scheme.encode("ascii")))
    return CleanedHeaders(
        headers=kept,
        client_ip=effective_client_ip(peer_ip, forwarded_for, trusted_proxies),
        scheme=effective_scheme,
        is_websocket_upgrade=websocket,
        connection_tokens=frozenset(connection_tokens),
    )
