"""Tunnel credentials: secrets, their stored hashes, and run tokens.

A tunnel secret is 32 random bytes in base64url; the edge stores only its SHA-256
hex digest, so a leaked store does not let anyone run the tunnel. A run token
bundles what a connector needs (tunnel id, secret, edge URL) in one copy-pasteable
string: base64url, without padding, of the compact JSON ``{"t", "s", "e"}``. The
connector presents it as ``Authorization: Bearer <token>`` in the upgrade request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import InvalidRunToken

__all__ = [
    "InvalidRunToken",
    "RunToken",
    "bearer_authorization",
    "decode_run_token",
    "encode_run_token",
    "hash_secret",
    "new_tunnel_secret",
    "parse_bearer",
    "verify_secret",
]

SECRET_BYTES = 32
MAX_RUN_TOKEN_LENGTH = 4096
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class RunToken:
    tunnel_id: str
    secret: str = field(repr=False)
    edge_url: str | None = None


def new_tunnel_secret(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh secret, as ``secrets.token_urlsafe(32)`` would produce."""
    return base64.urlsafe_b64encode(random_bytes(SECRET_BYTES)).rstrip(b"=").decode("ascii")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def verify_secret(secret: str, hashes: Iterable[str]) -> bool:
    """True if ``secret`` matches any stored hash; every hash is compared, in constant time."""
    digest = hash_secret(secret).encode("ascii")
    matched = False
    for stored in hashes:
        matched |= hmac.compare_digest(digest, stored.encode("ascii", errors="replace"))
    return matched


def encode_run_token(tunnel_id: str, secret: str, edge_url: str) -> str:
    document = json.dumps({"t": tunnel_id, "s": secret, "e": edge_url}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_run_token(token: str) -> RunToken:
    """Parse a run token; ``e`` (the edge URL) may be absent in tokens minted elsewhere."""
    token = token.strip()
    if not token or len(token) > MAX_RUN_TOKEN_LENGTH or not _BASE64URL.fullmatch(token):
        raise InvalidRunToken("a run token is a base64url string (A-Z a-z 0-9 - _)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        raise InvalidRunToken("the run token does not decode to JSON") from None
    if not isinstance(document, dict):
        raise InvalidRunToken("the run token does not hold a JSON object")
    tunnel_id = document.get("t")
    secret = document.get("s")
    edge_url = document.get("e")
    if not isinstance(tunnel_id, str) or not tunnel_id:
        raise InvalidRunToken("the run token lacks a tunnel id (t)")
    if not isinstance(secret, str) or not secret:
        raise InvalidRunToken("the run token lacks a tunnel secret (s)")
    if edge_url is not None and not isinstance(edge_url, str):
        raise InvalidRunToken("the run token's edge URL (e) is not a string")
    return RunToken(tunnel_id=tunnel_id, secret=secret, edge_url=edge_url)


def bearer_authorization(token: str) -> tuple[str, str]:
    """The upgrade-request header that presents a run token."""
    return ("Authorization", f"Bearer {token}")


def parse_bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` value, or None when absent or malformed."""
    if value is None:
        return None
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        return None
    return credential
