"""The one canonicaliser for request hosts and paths.

Routing, policy matching and the upstream request all consume the output of this module and
nothing else, so the path a policy rule saw is byte for byte the path the origin receives. Any
input that could be read two ways by two parsers (an encoded slash, a backslash, a dot segment
hidden behind ``;`` or percent-encoding, overlong UTF-8, a control byte) is either normalised to
a single spelling or refused.

Errors::

    RequestRejected                 status, code, detail: answered with the standard page
    └── BadRequest                  400: the host or target cannot be made canonical

``edge.http_messages`` adds its own subclasses (408, 413, 421, 431, 505) to the same root so a
handler that lets one escape still produces the right answer.

Decisions worth knowing:

* Paths are case-sensitive: ``/PUBLIC`` is not ``/public``.
* ``%2F``, ``%5C`` and a raw ``\\`` are refused (400) unless the application opts in with
  ``allow_encoded_slash``; then they stay encoded (``%2F``/``%5C``) inside their segment and
  never act as separators.
* Percent-decoding happens exactly once: ``%252F`` stays ``%252F``.
* A segment whose part before the first ``;`` is ``.`` or ``..`` (``..;x``) is refused: some
  origin servers treat it as a dot segment, which would let a path escape the prefix a policy
  matched.
* Dot segments never climb above the root; empty segments (``//``) collapse; a trailing slash is
  kept.
* Fragments (``#``) are not part of a request target and are refused.
* Hosts: ASCII only on the wire. A Unicode host name (from configuration) is converted to its
  ``xn--`` form; ``xn--`` labels must decode and re-encode to themselves. Numeric hosts must be
  dotted-quad IPv4 or bracketed IPv6 (no zone); a name whose last label is numeric is refused
  because browsers would read it as an IPv4 address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "BadRequest",
    "CanonicalTarget",
    "HostPort",
    "RequestRejected",
    "canonical_host",
    "canonical_path",
    "parse_host_header",
    "path_matches_prefix",
    "split_absolute_target",
]


class RequestRejected(Exception):
    """A request the edge answers itself with an error page; carries the status to send."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status


class BadRequest(RequestRejected):
    """The host or request target is malformed or ambiguous (HTTP 400)."""

    status = 400
    code = "bad_request"


@dataclass(frozen=True)
class HostPort:
    """A canonical host (lower-case, no trailing dot, IPv6 in brackets) and an optional port."""

    host: str
    port: int | None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CanonicalTarget:
    """The canonical path and the query exactly as the client sent it (``None`` without ``?``)."""

    path: str
    query: str | None

    @property
    def target(self) -> str:
        """What the origin receives: the canonical path plus the original query."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


# --- hosts ---------------------------------------------------------------------------------

MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")


def canonical_host(raw: str) -> str:
    """Canonical host of a ``Host`` value, absolute-form authority or SNI name; port dropped."""
    return parse_host_header(raw).host


def parse_host_header(raw: str) -> HostPort:
    """Split ``host[:port]`` and canonicalise both halves; anything odd is ``BadRequest``."""
    if len(raw) <= _CACHED_LENGTH:
        return _parse_host_header_cached(raw)
    return _parse_host_header(raw)


# Every request canonicalises its host and path; most repeat. Results of short inputs are
# kept (bounded, least recently used first out); errors are never cached.
_CACHED_LENGTH = 256
_CACHE_SIZE = 4096


def _parse_host_header(raw: str) -> HostPort:
    if not raw or raw != raw.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise BadRequest("the host is empty or contains whitespace or control characters")
    if "@" in raw or "/" in raw or "\\" in raw or "?" in raw or "#" in raw:
        raise BadRequest("the host contains characters that are not allowed in a host name")
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise BadRequest("unterminated IPv6 literal in host")
        host = _canonical_ipv6(raw[1:end])
        rest = raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest("unexpected characters after IPv6 literal in host")
        port = _parse_port(rest[1:]) if rest else None
        return HostPort(host, port)
    name, sep, port_text = raw.rpartition(":")
    if not sep:
        name, port_text = raw, ""
    elif ":" in name:
        raise BadRequest("an IPv6 host must be written in brackets")
    port = _parse_port(port_text) if sep else None
    return HostPort(_canonical_name(name), port)


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text):
        raise BadRequest("the port in the host is not a number")
    port = int(text)
    if not 0 < port < 65536:
        raise BadRequest("the port in the host is out of range")
    return port


def _canonical_ipv6(text: str) -> str:
    if "%" in text:
        raise BadRequest("IPv6 zone identifiers are not allowed in a host")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise BadRequest("the IPv6 literal in the host is invalid") from None
    return f"[{address.compressed}]"


def _canonical_name(name: str) -> str:
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise BadRequest("the host name is empty")
    labels = name.split(".")
    if labels[-1].isascii() and labels[-1].isdigit():
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise BadRequest("a host whose last label is numeric must be an IPv4 address") from None
    if labels[-1].lower().startswith("0x") and labels[-1].isascii():
        raise BadRequest("hexadecimal IPv4 hosts are not allowed")
    canonical = ".".join(_canonical_label(label) for label in labels)
    if len(canonical) > MAX_HOST_LENGTH:
        raise BadRequest("the host name is too long")
    return canonical


def _canonical_label(label: str) -> str:
    if not label.isascii():
        label = _unicode_to_alabel(label)
    label = label.lower()
    if not 0 < len(label) <= MAX_LABEL_LENGTH or not _LABEL.fullmatch(label):
        raise BadRequest(f"the host label {label[:70]!r} is not a valid DNS label")
    if label.startswith("xn--"):
        _check_alabel(label)
    return label


def _unicode_to_alabel(label: str) -> str:
    normalised = unicodedata.normalize("NFC", label).lower()
    if not all(_idna_char_allowed(c) for c in normalised):
        raise BadRequest("the host contains characters that cannot appear in a host name")
    try:
        return "xn--" + normalised.encode("punycode").decode("ascii")
    except UnicodeError:
        raise BadRequest("the host name cannot be encoded as IDNA") from None


def _check_alabel(label: str) -> None:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        raise BadRequest("the host contains an invalid xn-- label") from None
    if (
        decoded.isascii()
        or unicodedata.normalize("NFC", decoded) != decoded
        or decoded.lower() != decoded
        or not all(_idna_char_allowed(c) for c in decoded)
        or "xn--" + decoded.encode("punycode").decode("ascii") != label
    ):
        raise BadRequest("the host contains an xn-- label that is not in canonical form")


def _idna_char_allowed(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char == "-"
    return unicodedata.category(char)[0] in "LMN"


# --- request targets ----------------------------------------------------------------------

# Characters RFC 3986 allows literally in a path segment; everything else is percent-encoded.
_SEGMENT_SAFE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ABSOLUTE_FORM = re.compile(r"(?i)(https?)://([^/?#]*)(.*)")


def split_absolute_target(raw_target: str) -> tuple[str, str, str] | None:
    """``(scheme, authority, origin-form rest)`` for an absolute-form target, else ``None``.

    The rest is ``/`` when the URL has no path. Userinfo in the authority is refused.
    """
    match = _ABSOLUTE_FORM.fullmatch(raw_target)
    if match is None:
        return None
    scheme, authority, rest = match.groups()
    if not authority:
        raise BadRequest("absolute-form target without a host")
    if "@" in authority:
        raise BadRequest("absolute-form target with user information")
    if not rest.startswith("/"):
        rest = "/" + rest
    return scheme.lower(), authority, rest


def canonical_path(raw_target: str, *, allow_encoded_slash: bool = False) -> CanonicalTarget:
    """Canonicalise an origin-form target; the query is kept verbatim but checked for bytes."""
    if len(raw_target) <= _CACHED_LENGTH:
        return _canonical_path_cached(raw_target, allow_encoded_slash)
    return _canonical_path(raw_target, allow_encoded_slash)


def _canonical_path(raw_target: str, allow_encoded_slash: bool) -> CanonicalTarget:
    if not raw_target.startswith("/"):
        raise BadRequest("the request target must be an absolute path")
    if not raw_target.isascii() or any(not 0x20 < ord(c) < 0x7F for c in raw_target):
        raise BadRequest("the request target contains whitespace, control or non-ASCII bytes")
    if "#" in raw_target:
        raise BadRequest("the request target contains a fragment")
    raw_path, sep, query = raw_target.partition("?")
    if "\\" in raw_path and not allow_encoded_slash:
        raise BadRequest("backslashes are not allowed in paths")
    segments: list[str] = []
    trailing_slash = False
    for raw_segment in raw_path.split("/")[1:]:
        decoded = _decode_segment(raw_segment, allow_encoded_slash)
        head = decoded.split(";", 1)[0]
        if head in (".", "..") and decoded != head:
            raise BadRequest("dot segments with parameters are ambiguous")
        if decoded == "..":
            if segments:
                segments.pop()
            trailing_slash = True
        elif decoded in (".", ""):
            trailing_slash = True
        else:
            segments.append(_encode_segment(decoded))
            trailing_slash = False
    path = "/" + "/".join(segments)
    if trailing_slash and segments:
        path += "/"
    return CanonicalTarget(path, query if sep else None)


_canonical_path_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_canonical_path)
_parse_host_header_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse_host_header)


def _decode_segment(segment: str, allow_encoded_slash: bool) -> str:
    """Percent-decode one segment once and check the result is clean UTF-8 text."""
    raw = segment.encode("ascii")
    out = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == 0x25:  # '%'
            pair = raw[index + 1 : index + 3]
            if len(pair) != 2 or not (pair[0] in _HEX and pair[1] in _HEX):
                raise BadRequest("malformed percent-encoding in path")
            value = int(pair, 16)
            if value in (0x2F, 0x5C) and not allow_encoded_slash:
                raise BadRequest("encoded slashes and backslashes are not allowed in paths")
            out.append(value)
            index += 3
        else:
            out.append(byte)
            index += 1
    try:
        text = out.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise BadRequest("the path contains control characters")
    return text


def _encode_segment(text: str) -> str:
    return "".join(
        chr(byte) if byte in _SEGMENT_SAFE else f"%{byte:02X}" for byte in text.encode("utf-8")
    )


def path_matches_prefix(path: str, prefix: str) -> bool:
    """Whether canonical ``path`` lies under ``prefix`` on a segment boundary.

    ``/public`` matches ``/public``, ``/public/`` and ``/public/x`` but not ``/publicity``; a
    trailing slash on the prefix makes no difference, and ``/`` matches every path.
    """
    base = prefix.rstrip("/")
    if not base:
        return path.startswith("/")
    return path == base or path.startswith(base + "/")
