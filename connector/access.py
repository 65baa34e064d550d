"""Connector-side check of the edge's identity assertion, before anything reaches the origin.

With ``originRequest.access = {required = true, teamDomain = "https://auth.example.com",
audTag = ["..."]}`` on a rule, every stream for it must carry a valid app token in
``Cf-Access-Jwt-Assertion``: signed by a key the edge publishes at
``teamDomain/cdn-cgi/access/certs`` (or ``certsUrl``), issued by ``teamDomain``, for one of the
AUD tags, unexpired. So a route that lost its Access application (or a compromised edge route
that skips it) still cannot reach the origin: the stream is reset with ACCESS_DENIED, which the
edge shows as 403.

The key set is fetched on first use and cached; a token signed with an unknown ``kid`` triggers
one refresh (at most one per ``refresh_floor`` seconds, so garbage kids cannot make the
connector hammer the edge). Algorithms are a fixed allow-list; key URLs in tokens are ignored.

PyJWT (with the ``cryptography`` it loads) and httpx are imported on first use: together they
are about a fifth of an idle connector's memory, and most connectors have no rule that asks
for this check.

Errors::

    AccessVerificationError      base
     +-- AssertionRejected       the stream's assertion is missing or invalid (reset ACCESS_DENIED)
     +-- KeysUnavailable         the key set could not be fetched (also ACCESS_DENIED: fail closed)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from connector.errors import ConfigError

if TYPE_CHECKING:
    import jwt

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AccessRequirement",
    "AccessVerificationError",
    "AssertionRejected",
    "AssertionVerifier",
    "KeysUnavailable",
    "fetch_jwks_over_http",
    "parse_access_requirement",
]

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "ES256")
CERTS_PATH = "/cdn-cgi/access/certs"
DEFAULT_HEADER = "Cf-Access-Jwt-Assertion"
MAX_ASSERTION_LENGTH = 16384


class AccessVerificationError(Exception):
    pass


class AssertionRejected(AccessVerificationError):
    """Permanent for this stream: the edge did not vouch for the visitor."""


class KeysUnavailable(AccessVerificationError):
    """Retryable: the edge's key set could not be read; streams are refused meanwhile."""


@dataclass(frozen=True, slots=True)
class AccessRequirement:
    """``originRequest.access`` of one ingress rule."""

    team_domain: str
    aud_tags: tuple[str, ...]
    required: bool = True
    certs_url: str | None = None
    header_name: str = DEFAULT_HEADER

    @property
    def issuer(self) -> str:
        return self.team_domain.rstrip("/")

    @property
    def keys_url(self) -> str:
        return self.certs_url or self.issuer + CERTS_PATH


FetchJwks = Callable[[str], Awaitable[Mapping[str, Any]]]


async def fetch_jwks_over_http(url: str) -> Mapping[str, Any]:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
            response = await client.get(url)
    except httpx.HTTPError as error:
        raise KeysUnavailable(f"cannot fetch {url}: {error}") from None
    if response.status_code != 200:
        raise KeysUnavailable(f"{url} answered {response.status_code}")
    try:
        document = response.json()
    except json.JSONDecodeError:
        raise KeysUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable(f"{url} has no 'keys' list")
    return document


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK]
    fetched_at: float


class AssertionVerifier:
    """Verifies assertions against each team domain's published keys, cached per URL."""

    def __init__(self, *, fetch: FetchJwks = fetch_jwks_over_http,
                 clock: Callable[[], float] = time.time, refresh_floor: float = 10.0) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refresh_floor = refresh_floor
        self._sets: dict[str, _KeySet] = {}
        self._lock = trio.Lock()

    async def check(self, head: Mapping[str, Any], requirement: AccessRequirement
                    ) -> dict[str, Any] | None:
        """The verified claims; raises AssertionRejected/KeysUnavailable. Without
        ``required``, a missing assertion passes (None) but a present one must be valid."""
        token = _assertion(head, requirement.header_name)
        if token is None:
            if requirement.required:
                raise AssertionRejected(f"no {requirement.header_name} on the stream")
            return None
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as error:
            raise AssertionRejected(f"malformed assertion: {error}") from None
        if not isinstance(kid, str) or not kid:
            raise AssertionRejected("assertion without a key id")
        key = await self._key(requirement.keys_url, kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=list(requirement.aud_tags),
                issuer=requirement.issuer,
                options={"require": ["exp", "iat", "aud", "iss"]},
                leeway=5,
            )
        except jwt.PyJWTError as error:
            raise AssertionRejected(f"assertion refused: {error}") from None
        if key.algorithm_name not in ALLOWED_ALGORITHMS:
            raise AssertionRejected("assertion key of a refused algorithm")
        return claims

    async def _key(self, url: str, kid: str) -> jwt.PyJWK:
        async with self._lock:
            cached = self._sets.get(url)
            if cached is not None and kid in cached.keys:
                return cached.keys[kid]
            now = self._clock()
            if cached is None or now - cached.fetched_at >= self._refresh_floor:
                cached = _KeySet(_parse_keys(await self._fetch(url)), now)
                self._sets[url] = cached
                log.info("access keys fetched url=%s keys=%d", url, len(cached.keys))
            if kid not in cached.keys:
                raise AssertionRejected("assertion signed with an unknown key")
            return cached.keys[kid]


def _parse_keys(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    import jwt

    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            keys[entry["kid"]] = key
    if not keys:
        raise KeysUnavailable("the key set holds no usable key")
    return keys


def _assertion(head: Mapping[str, Any], header_name: str) -> str | None:
    wanted = header_name.lower()
    headers = head.get("headers") or ()
    if not isinstance(headers, list | tuple):
        return None
    for pair in headers:
        if (isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and pair[0].strip().lower() == wanted and isinstance(pair[1], str)):
            value = pair[1].strip()
            return value if 0 < len(value) <= MAX_ASSERTION_LENGTH else None
    return None


def parse_access_requirement(raw: object, key_path: str) -> AccessRequirement:
    """``originRequest.access`` from TOML; errors name the key path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key_path}", "expected a table")
    allowed = {"required", "teamDomain", "audTag", "certsUrl", "headerName"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{key_path}.{unknown[0]}", f"unknown key (expected one of "
                         f"{', '.join(sorted(allowed))})")
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise ConfigError(f"{key_path}.required", "expected true or false")
    team = raw.get("teamDomain")
    if not isinstance(team, str) or not team.startswith(("https://", "http://")):
        raise ConfigError(f"{key_path}.teamDomain", "expected a URL like "
                         '"https://auth.example.com"')
    tags = raw.get("audTag")
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        raise ConfigError(f"{key_path}.audTag", "expected a list of AUD tags")
    certs = raw.get("certsUrl")
    if certs is not None and (not isinstance(certs, str)
                              or not certs.startswith(("https://", "http://"))):
        raise ConfigError(f"{key_path}.certsUrl", "expected a URL")
    header = raw.get("headerName", DEFAULT_HEADER)
    if not isinstance(header, str) or not header:
        raise ConfigError(f"{key_path}.headerName", "expected a header name")
    return AccessRequirement(team, tuple(tags), required, certs, header)
