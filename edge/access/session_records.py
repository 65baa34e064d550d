"""The records sessions are made of: global and app sessions, login state, identities.

Kept apart from ``edge.access.sessions`` (the manager that creates, checks and revokes them)
because these shapes are also what leaves the edge: the store backends persist them through the
manager's ``on_change`` hook and read them back on start-up or from another edge, so their
record form must stay stable whatever the manager's rules become. ``edge.access.sessions``
re-exports these names.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edge.access.identity import Identity

__all__ = [
    "AppSession",
    "GlobalSession",
    "LoginState",
    "identity_from_record",
    "identity_to_record",
    "pkce_challenge",
]


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def identity_to_record(identity: Identity) -> dict[str, Any]:
    """A JSON-ready dict of an identity, for persistence."""
    record = asdict(identity)
    record["groups"] = list(identity.groups)
    record["amr"] = list(identity.amr)
    return record


def identity_from_record(record: Mapping[str, Any]) -> Identity:
    return Identity(
        sub=str(record["sub"]),
        email=str(record["email"]),
        email_verified=bool(record["email_verified"]),
        name=str(record["name"]),
        groups=tuple(str(group) for group in record["groups"]),
        idp=str(record["idp"]),
        amr=tuple(str(method) for method in record.get("amr", ())),
        country=record.get("country"),
        service_token=record.get("service_token"),
        issued_at=float(record.get("issued_at", 0.0)),
    )


@dataclass(frozen=True, slots=True)
class GlobalSession:
    """A login at the auth domain. ``nonce`` is its public handle (the tokens'
    ``identity_nonce``); ``id`` is secret and only ever travels sealed in a cookie."""

    id: str
    identity: Identity
    created_at: float
    expires_at: float
    nonce: str
    idp: str

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "identity": identity_to_record(self.identity)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GlobalSession:
        return cls(**{**record, "identity": identity_from_record(record["identity"])})


@dataclass(frozen=True, slots=True)
class AppSession:
    """A global session's admission to one application, valid while its epoch is current."""

    session_id: str
    aud: str
    created_at: float
    expires_at: float
    epoch: int


@dataclass(frozen=True, slots=True)
class LoginState:
    """Everything the callback needs to finish a login; never leaves the edge."""

    state: str
    nonce: str
    pkce_verifier: str
    return_url: str
    app_aud: str | None
    idp: str
    created_at: float

    @property
    def code_challenge(self) -> str:
        return pkce_challenge(self.pkce_verifier)
