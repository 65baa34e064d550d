"""Where the edge may send a browser back to after a login, a hand-off or a logout.

Every parameter that carries a return URL (``login``, ``authorized``, ``logout``, the CLI login)
goes through :func:`safe_return_url`. Open redirects in gateways come from two parsers reading
one string two ways, so this module does not try to understand odd inputs: it accepts a narrow
grammar and answers with a URL it *rebuilt* from the parts it checked, never the raw input.

Accepted:

* a relative path: exactly one leading ``/`` (not ``//``, not ``/\\``), checked again after
  each round of percent-decoding (``/%2F/evil``, ``/%252F/evil``), because browsers, proxies and
  frameworks decode a different number of times;
* an absolute ``http``/``https`` URL written ``scheme://host[:port][/path][?query][#fragment]``
  whose host, canonicalised by :mod:`edge.canonical` (lower case, trailing dot dropped, IDN to
  ``xn--``), is one the edge serves. User info (``@``), percent signs and backslashes in the
  authority are refused outright rather than interpreted.

Refused anywhere (raw or decoded): ASCII control characters (browsers silently delete tab, CR and
LF, which turns ``/%09/evil`` into ``//evil``), backslashes (browsers read them as ``/``), and
anything over :data:`MAX_RETURN_URL_LENGTH`. Everything refused becomes ``default``.

:func:`is_loopback_callback` is the stricter rule for credential-bearing redirects (a CLI login
asks for a token to be delivered to a URL): only ``http://127.0.0.1:PORT``, ``http://localhost:
PORT`` or ``http://[::1]:PORT``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from urllib.parse import quote, unquote

from edge.canonical import BadRequest, parse_host_header

__all__ = ["MAX_RETURN_URL_LENGTH", "is_loopback_callback", "safe_return_url"]

MAX_RETURN_URL_LENGTH = 2048
_DECODE_ROUNDS = 3
_ABSOLUTE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)")
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Characters kept literally when a path/query/fragment is re-serialised; everything else
# (spaces, quotes, angle brackets, non-ASCII) is percent-encoded so the result is a plain ASCII
# header value that no HTML or header context can be broken out of.
_KEEP_IN_PATH = "/!$&'()*+,;=:@-._~%"
_KEEP_IN_QUERY = _KEEP_IN_PATH + "?"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
_LOOPBACK_CALLBACK = re.compile(
    r"http://(?P<host>127\.0\.0\.1|localhost|\[::1\]):(?P<port>[0-9]{1,5})(?P<rest>[/?][^#]*)?"
)


def _has_forbidden_characters(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in text)


def _decodings(text: str) -> list[str]:
    """The text and each successive percent-decoding of it, until it stops changing."""
    forms = [text]
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(forms[-1], errors="strict") if "%" in forms[-1] else forms[-1]
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def _clean_everywhere(text: str) -> bool:
    try:
        forms = _decodings(text)
    except UnicodeDecodeError:
        return False
    return not any(_has_forbidden_characters(form) for form in forms)


def _safe_path(candidate: str) -> str | None:
    """The re-serialised relative path, or None when it could leave the current host."""
    path, _, fragment = candidate.partition("#")
    path, has_query, query = path.partition("?")
    try:
        forms = _decodings(path)
    except UnicodeDecodeError:
        return None
    for form in forms:
        if not form.startswith("/") or form.startswith("//"):
            return None
    result = quote(path, safe=_KEEP_IN_PATH)
    if has_query:
        result += "?" + quote(query, safe=_KEEP_IN_QUERY)
    if fragment:
        result += "#" + quote(fragment, safe=_KEEP_IN_QUERY)
    return result


def _safe_absolute(
    candidate: str, served_hosts: Callable[[str], bool], allowed_ports: Collection[int] | None
) -> str | None:
    match = _ABSOLUTE.fullmatch(candidate)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    authority = match["authority"]
    if scheme not in ("http", "https") or not authority or "@" in authority or "%" in authority:
        return None
    try:
        host_port = parse_host_header(authority)
    except BadRequest:
        return None
    if allowed_ports is not None and host_port.port is not None:
        if host_port.port not in allowed_ports:
            return None
    if not served_hosts(host_port.host):
        return None
    rest = match["rest"]
    tail = ""
    if rest:
        if rest[0] == "/":
            # A path inside an absolute URL cannot change the host, but it still must not be
            # readable as a network-path reference if a later step strips the authority.
            tail = _safe_path(rest) or ""
            if not tail:
                return None
        else:
            tail = "/" + quote(rest, safe=_KEEP_IN_QUERY + "#")
    return f"{scheme}://{host_port}{tail or '/'}"


def safe_return_url(
    candidate: str,
    *,
    served_hosts: Callable[[str], bool],
    default: str = "/",
    allowed_ports: Collection[int] | None = None,
) -> str:
    """``candidate`` rebuilt if it is safe to redirect to, else ``default``.

    ``served_hosts`` receives a canonical host name without port (``app.example.com``,
    ``127.0.0.1``, ``[::1]``) and says whether the edge serves it. ``allowed_ports``, when
    given, additionally restricts an explicit port in an absolute URL.
    """
    if not candidate or len(candidate) > MAX_RETURN_URL_LENGTH:
        return default
    if not _clean_everywhere(candidate):
        return default
    if candidate.startswith("/"):
        return _safe_path(candidate) or default
    if _SCHEME_LIKE.match(candidate):
        return _safe_absolute(candidate, served_hosts, allowed_ports) or default
    return default


def is_loopback_callback(url: str) -> bool:
    """Whether ``url`` is a loopback HTTP listener a CLI login may receive a token on.

    The port is required (a CLI listens on an ephemeral one); user info, fragments, backslashes
    and control characters are refused; host names other than the three loopback spellings
    (``127.0.0.1``, ``localhost``, ``[::1]``) are refused, including ``localhost.`` and other
    addresses in 127/8, so a look-alike can never pass.
    """
    if len(url) > MAX_RETURN_URL_LENGTH or not _clean_everywhere(url):
        return False
    match = _LOOPBACK_CALLBACK.fullmatch(url)
    if match is None or match["host"] not in _LOOPBACK_HOSTS:
        return False
    port = int(match["port"])
    if not 0 < port < 65536 or match["port"].startswith("0"):
        return False
    rest = match["rest"] or ""
    return not rest or _safe_path(rest if rest.startswith("/") else "/" + rest) is not None
