"""What both store backends do for a service token before and after their SQL.

A token is made (name and lifetime checked, client id and secret drawn, the secret hashed)
the same way whichever database keeps it, and a clash or a missing token reads the same to the
admin API's caller (:mod:`edge.store.access_tables` stores it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from edge.store import Conflict, NotFound
from edge.store.access_records import ServiceToken, parse_access_name, parse_seconds
from edge.store.record_fields import MAX_SERVICE_TOKEN_DURATION
from tunnel.auth import hash_secret

__all__ = [
    "MIN_SERVICE_TOKEN_DURATION",
    "new_service_token",
    "service_token_exists",
    "service_token_not_found",
]

MIN_SERVICE_TOKEN_DURATION = 60


def new_service_token(
    name: str,
    duration: int,
    *,
    random_bytes: Callable[[int], bytes],
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[ServiceToken, str]:
    """A token named ``name`` valid for ``duration`` seconds from ``now``, and its secret: the
    secret is shown once and only its hash is kept (InvalidInput for a bad name or lifetime)."""
    parse_access_name(name, "name", what="service token")
    seconds = parse_seconds(
        duration, "duration", low=MIN_SERVICE_TOKEN_DURATION, high=MAX_SERVICE_TOKEN_DURATION
    )
    secret = random_bytes(32).hex()
    client_id = random_bytes(16).hex() + ".access"
    created = now.astimezone(UTC)
    token = ServiceToken(
        id=new_id(),
        name=name,
        client_id=client_id,
        secret_hash=hash_secret(secret),
        created_at=created,
        expires_at=created + timedelta(seconds=seconds),
    )
    return token, secret


def service_token_exists(name: str) -> Conflict:
    return Conflict(
        f"a service token named {name!r} already exists",
        code="service_token_exists",
        hint="delete it first to issue a new secret",
    )


def service_token_not_found(name: str) -> NotFound:
    return NotFound(
        f"no service token named {name!r}",
        code="service_token_not_found",
        hint="list them with GET /v1/service-tokens",
    )
