"""Hostname routes: which tunnel serves a canonical host.

The table is an immutable snapshot. The admin path builds a new one from the store and swaps it
in with one assignment, so the request path never takes a lock or touches the store.

Matching follows cloudflared/Cloudflare DNS semantics: an exact hostname wins over a wildcard,
and `*.example.com` matches any name below `example.com` (`a.example.com`, `a.b.example.com`)
but not `example.com` itself. When two wildcards could match, the longest suffix wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    hostname: str
    tunnel_id: str
    tunnel_name: str


class RouteTable:
    """Exact and wildcard hostname lookup over canonical (lower-case, no trailing dot) hosts."""

    __slots__ = ("_exact", "_wildcards")

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[str, Route] = {}
        self._wildcards: dict[str, Route] = {}
        for route in routes:
            if route.hostname.startswith("*."):
                self._wildcards[route.hostname[1:]] = route  # key ".example.com"
            else:
                self._exact[route.hostname] = route

    def lookup(self, host: str) -> Route | None:
        route = self._exact.get(host)
        if route is not None:
            return route
        if not self._wildcards:
            return None
        # Walk the suffixes from the longest to the shortest: "a.b.example.com" tries
        # ".b.example.com", then ".example.com", then ".com".
        index = host.find(".")
        while index != -1:
            route = self._wildcards.get(host[index:])
            if route is not None:
                return route
            index = host.find(".", index + 1)
        return None

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)

    def routes(self) -> list[Route]:
        return [*self._exact.values(), *self._wildcards.values()]
