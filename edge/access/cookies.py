"""Cookie syntax for the Access layer: building ``Set-Cookie`` values and reading ``Cookie``.

Kept apart from ``edge.access.sessions`` because it is pure header syntax with no session state:
the gate, the login flow and the CLI login all read and write cookies, and the rules that make
them safe (always ``HttpOnly; SameSite=Lax``, host-only, ``Secure`` unless a plain-http loopback
demo turns it off; malformed pairs skipped, a bounded count read) must be the same everywhere.
``edge.access.sessions`` re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tunnel.bounded_memo import BoundedMemo

__all__ = [
    "MAX_COOKIES",
    "MAX_COOKIE_VALUE",
    "build_cookie",
    "cookie_values",
    "expired_cookie",
    "parse_cookies",
]

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_COOKIE_PATH = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")
MAX_COOKIES = 100
MAX_COOKIE_VALUE = 4096


def build_cookie(name: str, value: str, *, max_age: int, secure: bool, path: str = "/") -> str:
    """A ``Set-Cookie`` value: host-only (no ``Domain``), ``HttpOnly``, ``SameSite=Lax``.

    ``secure`` is False only for plain-http loopback demos; browsers drop ``Secure`` cookies
    sent over http.
    """
    if not _COOKIE_NAME.fullmatch(name):
        raise ValueError(f"invalid cookie name {name!r}")
    if not _COOKIE_VALUE.fullmatch(value) or len(value) > MAX_COOKIE_VALUE:
        raise ValueError("cookie value contains characters a cookie cannot carry")
    if not _COOKIE_PATH.fullmatch(path):
        raise ValueError(f"invalid cookie path {path!r}")
    if max_age < 0:
        raise ValueError("max_age must not be negative")
    attributes = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly"]
    attributes.append("SameSite=Lax")
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes)


def expired_cookie(name: str, *, secure: bool, path: str = "/") -> str:
    """A ``Set-Cookie`` value that makes the browser forget cookie ``name`` right away."""
    return build_cookie(name, "", max_age=0, secure=secure, path=path)


def _cookie_pairs(header_values: Iterable[str | bytes]) -> Iterable[tuple[str, str]]:
    count = 0
    for header in header_values:
        text = header.decode("latin-1") if isinstance(header, bytes) else header
        for piece in text.split(";"):
            name, sep, value = piece.partition("=")
            name, value = name.strip(" \t"), value.strip(" \t")
            if not sep or not _COOKIE_NAME.fullmatch(name):
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if len(value) > MAX_COOKIE_VALUE or not _COOKIE_VALUE.fullmatch(value):
                continue
            count += 1
            if count > MAX_COOKIES:
                return
            yield name, value


def parse_cookies(header_values: Iterable[str | bytes]) -> dict[str, str]:
    """Cookie name -> value from every ``Cookie`` header of a request.

    Malformed pairs (no ``=``, a name that is not a token, a value with characters a cookie
    cannot carry, over 4 KiB) are skipped, not fatal. When a name appears twice the **first**
    one wins: browsers send the cookie with the longest path, then the oldest, first, which is
    the one a host-only cookie of ours is. Only the first 100 cookies are read. Because a sibling
    subdomain can still plant a same-named cookie, every value of ours is sealed, and callers
    that must find *a* valid value use :func:`cookie_values`.
    """
    cookies: dict[str, str] = {}
    for name, value in _cookie_pairs(header_values):
        cookies.setdefault(name, value)
    return cookies


def cookie_values(header_values: Iterable[str | bytes], name: str) -> list[str]:
    """Every value of cookie ``name`` in the order the browser sent them."""
    values: list[str] = []
    count = 0
    for header in header_values:
        for found, value in _header_pairs(header):
            count += 1
            if count > MAX_COOKIES:
                return values
            if found == name:
                values.append(value)
    return values


# A browser sends the same Cookie header with every request of a session: its pairs are parsed
# once. Bounded in entries and in the size of a header kept; a full table starts over.
_PAIRS_SEEN_MAX = 1024
_PAIRS_HEADER_MAX = 8192
_PAIRS_SEEN: BoundedMemo[str | bytes, tuple[tuple[str, str], ...]] = BoundedMemo(
    _PAIRS_SEEN_MAX, _PAIRS_HEADER_MAX
)


def _header_pairs(header: str | bytes) -> tuple[tuple[str, str], ...]:
    pairs = _PAIRS_SEEN.get(header)
    if pairs is None:
        pairs = _PAIRS_SEEN.remember(header, tuple(_cookie_pairs([header])), len(header))
    return pairs
