"""Ingress rules: which local service answers a request that arrived over the tunnel.

The semantics follow cloudflared so that its configs port over unchanged:

- rules are tried in order and the first match wins;
- ``hostname`` matches exactly (case-insensitive, the request's port and trailing dot are
  ignored), or ``*.example.com`` matches any name below ``example.com`` at any depth
  (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself; an absent hostname
  or ``*`` matches every host;
- ``path`` is a regular expression *searched* in the request path (not anchored: write
  ``^/api/`` to mean a prefix), never in the query;
- the last rule must be a catch-all (no hostname, no path) and only the last, so every request
  has an answer and no rule is silently unreachable.

Rules are compiled once; :meth:`IngressTable.match` is on the request path and does no
allocation beyond host normalisation.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.access import AccessRequirement
from connector.errors import ConfigError

__all__ = [
    "HelloWorldService",
    "HttpService",
    "IngressRule",
    "IngressTable",
    "OriginRequest",
    "Service",
    "StatusService",
    "TcpService",
    "normalize_request_host",
    "parse_rule_hostname",
    "parse_service",
]

SERVICE_FORMS = (
    "http://HOST[:PORT], https://HOST[:PORT], unix:/PATH, unix+tls:/PATH, tcp://HOST:PORT, "
    "ssh://HOST[:PORT], http_status:NNN or hello_world"
)
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

HELLO_WORLD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunnelgate: it works</title>
<style>body{{font:15px/1.5 sans-serif;margin:2rem auto;max-width:46rem}}td{{padding:0 .5rem;
vertical-align:top;word-break:break-all}}</style></head>
<body><h1>It works</h1>
<p>This page comes from the connector's built-in <code>hello_world</code> service: the request
below travelled through the edge and the tunnel.</p>
<p><code>{method} {host}{path}</code></p>
<h2>Request headers</h2><table>{rows}</table>
<h2>Identity</h2><p>{identity}</p></body></html>
"""


@dataclass(frozen=True, slots=True)
class OriginRequest:
    """How the connector talks to one origin; per-rule values override the top-level ones."""

    connect_timeout: float = 30.0
    """Seconds for the TCP connect plus, for TLS origins, the handshake."""
    response_header_timeout: float = 100.0
    """Seconds to wait for the response head once the request is fully written (0 = none)."""
    no_tls_verify: bool = False
    origin_server_name: str | None = None
    """TLS server name to send and verify instead of the service's host."""
    ca_pool: Path | None = None
    """PEM file of CAs trusted for this origin, instead of the system store."""
    http_host_header: str | None = None
    """Host header sent to the origin instead of the visitor's."""
    keep_alive_timeout: float = 90.0
    """Seconds an idle pooled origin connection is kept."""
    keep_alive_connections: int = 100
    """Most idle connections kept per origin."""
    access: AccessRequirement | None = None
    """Verify the edge's assertion on every stream before the origin sees it."""


@dataclass(frozen=True, slots=True)
class HttpService:
    """An HTTP/1.1 origin over TCP (``http``/``https``) or a unix socket (``unix``/``unix+tls``)."""

    url: str
    tls: bool
    host: str
    port: int
    unix_path: str | None = None

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class TcpService:
    """A raw byte relay to ``host:port`` (``tcp://`` or ``ssh://``)."""

    url: str
    host: str
    port: int

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class StatusService:
    """Answers every request with a fixed status and no body (``http_status:404``)."""

    status: int

    def __str__(self) -> str:
        return f"http_status:{self.status}"


@dataclass(frozen=True, slots=True)
class HelloWorldService:
    """A built-in page that shows the request it received; handy to test a tunnel end to end."""

    def __str__(self) -> str:
        return "hello_world"

    @staticmethod
    def render(head: Mapping[str, Any]) -> bytes:
        """The page for one request head; every value from the request is HTML-escaped."""
        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(str(value))}</td></tr>"
            for name, value in head.get("headers") or ())
        identity = head.get("identity")
        return HELLO_WORLD_PAGE.format(
            method=html.escape(str(head.get("method", ""))),
            host=html.escape(str(head.get("host", ""))),
            path=html.escape(str(head.get("target", "/"))),
            rows=rows,
            identity=html.escape(str(identity)) if identity else "none (no identity was sent)",
        ).encode()


Service = HttpService | TcpService | StatusService | HelloWorldService


def _split_host_port(netloc_host: str | None, port: int | None, default: int | None,
                     text: str) -> tuple[str, int]:
    if not netloc_host:
        raise ValueError(f"{text!r} has no host")
    if port is None:
        if default is None:
            raise ValueError(f"{text!r} needs a port")
        port = default
    return netloc_host, port


def parse_service(text: str) -> Service:
    """Parse a rule's ``service``; raises ValueError with a person-readable reason."""
    if text == "hello_world":
        return HelloWorldService()
    if text.startswith("http_status:"):
        code = text.removeprefix("http_status:")
        if not code.isdigit() or not 100 <= int(code) <= 599:
            raise ValueError(f"{text!r}: expected http_status:NNN with NNN in 100-599")
        return StatusService(int(code))
    for prefix, tls in (("unix+tls:", True), ("unix:", False)):
        if text.startswith(prefix):
            path = text.removeprefix(prefix)
            if not path:
                raise ValueError(f"{text!r}: expected {prefix}/path/to/socket")
            return HttpService(url=text, tls=tls, host="localhost", port=0, unix_path=path)
    scheme, _, rest = text.partition("://")
    if not rest or scheme not in ("http", "https", "tcp", "ssh"):
        raise ValueError(f"{text!r} is not a service; expected one of {SERVICE_FORMS}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{text!r}: a service URL cannot carry a path or query; the request's own path "
            "is sent to the origin"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r}: a service URL cannot carry credentials")
    defaults = {"http": 80, "https": 443, "ssh": 22, "tcp": None}
    host, port_number = _split_host_port(parts.hostname, port, defaults[scheme], text)
    if scheme in ("http", "https"):
        return HttpService(url=text, tls=scheme == "https", host=host, port=port_number)
    return TcpService(url=text, host=host, port=port_number)


def parse_rule_hostname(text: str) -> str:
    """Normalise a rule's ``hostname`` (lower case, no trailing dot); ValueError if malformed."""
    host = text.strip().lower().rstrip(".")
    if host == "*":
        return host
    if ":" in host or "/" in host:
        raise ValueError(f"{text!r}: a hostname carries no port, scheme or path")
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 1:
            raise ValueError(f"{text!r}: a wildcard needs a domain after it, like *.example.com")
    if not labels or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{text!r} is not a hostname; a wildcard may only be the whole first label "
            "(*.example.com)"
        )
    return host


def normalize_request_host(host: str) -> str:
    """Lower-case a request's host and drop its port and trailing dot."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end != -1 else host.lower()
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class IngressRule:
    hostname: str | None
    """Normalised hostname, ``*.domain`` wildcard, ``*``, or None for every host."""
    path_regex: re.Pattern[str] | None
    service: Service
    origin_request: OriginRequest = field(default_factory=OriginRequest)

    @property
    def is_catch_all(self) -> bool:
        return self.hostname in (None, "*") and self.path_regex is None

    def matches(self, host: str, path: str) -> bool:
        """``host`` must already be normalised with :func:`normalize_request_host`."""
        wanted = self.hostname
        if wanted is not None and wanted != "*" and wanted != host:
            if not (wanted.startswith("*.") and host.endswith(wanted[1:])):
                return False
        return self.path_regex is None or self.path_regex.search(path) is not None

    def describe(self) -> str:
        parts = []
        if self.hostname is not None:
            parts.append(f"hostname={self.hostname}")
        if self.path_regex is not None:
            parts.append(f"path={self.path_regex.pattern}")
        if not parts:
            parts.append("catch-all")
        parts.append(f"service={self.service}")
        return ", ".join(parts)


class NoIngressMatch(LookupError):
    """No rule matched; cannot happen with a validated table, whose last rule catches all."""


class IngressTable:
    """An ordered, validated list of rules; the last one catches every request."""

    __slots__ = ("rules",)

    def __init__(self, rules: Sequence[IngressRule]) -> None:
        if not rules:
            raise ConfigError(
                "ingress", "at least one rule is needed",
                hint='end the list with a catch-all rule such as service = "http_status:404"',
            )
        for index, rule in enumerate(rules[:-1]):
            if rule.is_catch_all:
                raise ConfigError(
                    f"ingress[{index}]",
                    "only the last rule may match every request (no hostname and no path); "
                    "the rules after it could never match",
                )
        if not rules[-1].is_catch_all:
            raise ConfigError(
                f"ingress[{len(rules) - 1}]",
                "the last rule must match every request: give it no hostname and no path",
                hint='add a final rule such as service = "http_status:404"',
            )
        self.rules: tuple[IngressRule, ...] = tuple(rules)

    @classmethod
    def single(cls, service: str, origin_request: OriginRequest | None = None) -> IngressTable:
        """One catch-all rule, for ``tunnelgate tunnel run --url``; ValueError if malformed."""
        return cls([IngressRule(None, None, parse_service(service),
                                origin_request or OriginRequest())])

    def match(self, host: str, path: str) -> tuple[int, IngressRule]:
        """First rule matching ``host`` (any form) and ``path`` (no query), with its index."""
        canonical = normalize_request_host(host)
        for index, rule in enumerate(self.rules):
            if rule.matches(canonical, path):
                return index, rule
        raise NoIngressMatch(host)

    def explain(self, url: str) -> str:
        """One line saying which rule serves ``url`` (1-based numbering, as cloudflared)."""
        parts = urlsplit(url if "://" in url else f"https://{url}")
        index, rule = self.match(parts.netloc.rpartition("@")[2], parts.path or "/")
        return f"Matched rule #{index + 1}: {rule.describe()}"

    def __len__(self) -> int:
        return len(self.rules)
