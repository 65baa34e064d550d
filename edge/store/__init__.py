"""The edge's persistent state behind one interface.

The request path never reads the store: the edge keeps a route table and the tunnel secret
hashes in memory and rebuilds them when the admin API reports a change. So the interface is
synchronous (SQLite is local and fast) and the admin path calls it through
``trio.to_thread.run_sync``. Backends: :class:`edge.store.sqlite.SqliteStore` (embedded default);
:class:`edge.store.postgres.PostgresStore` (several edges on one PostgreSQL).

Errors (codes are the admin API's error codes)::

    EdgeError (edge.errors)
    └── StoreError              500 store_error: the database itself failed
        ├── NotFound            404 tunnel_not_found, route_not_found, app_not_found,
        │                           idp_not_found, service_token_not_found
        ├── Conflict            409 tunnel_exists, route_exists, app_exists, domain_taken,
        │                           idp_exists, idp_in_use, service_token_exists
        └── InvalidInput        400 invalid_name, invalid_hostname, invalid_domain, invalid_app,
                                    invalid_idp, invalid_policy, invalid_duration, unknown_idp;
                                    .key_path names the offending value

Routes are :class:`edge.routes.Route` values, so ``RouteTable(store.list_routes())`` builds the
edge's lookup table without conversion.

Names and host names are validated here, not by the callers, so that every way into the store
(admin API, CLI, a future import) accepts exactly the same values. The Access records
(applications, policies, IdPs, service tokens, sessions, revocations, decisions) and their
validators live in :mod:`edge.store.access_records`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge.errors import EdgeError
from edge.routes import Route

if TYPE_CHECKING:
    from edge.access.policy import AppPolicySet
    from edge.config import EdgeConfig
    from edge.store.access_records import (
        AppRecord,
        AppSpec,
        DecisionRecord,
        IdpRecord,
        Revocation,
        ServiceToken,
        SessionRecord,
    )

KeyRecord = dict[str, str | float | None]
"""A signing key as ``edge.access.tokens.SigningKey.to_record()`` writes it."""

__all__ = [
    "AuditEvent",
    "Conflict",
    "InvalidInput",
    "KeyRecord",
    "NotFound",
    "Route",
    "Store",
    "StoreError",
    "Tunnel",
    "normalize_hostname",
    "open_store",
    "validate_tunnel_name",
]

_TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class StoreError(EdgeError):
    """The store could not do what was asked."""

    code = "store_error"
    status = 500


class NotFound(StoreError):
    code = "not_found"
    status = 404


class Conflict(StoreError):
    code = "conflict"
    status = 409


class InvalidInput(StoreError):
    """A value the store refuses; the message starts with ``key_path`` when there is one."""

    code = "invalid_input"
    status = 400

    def __init__(
        self, message: str, *, code: str | None = None, hint: str = "", key_path: str = ""
    ) -> None:
        super().__init__(f"{key_path}: {message}" if key_path else message, code=code, hint=hint)
        self.key_path = key_path


@dataclass(frozen=True)
class Tunnel:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class AuditEvent:
    """One audit log entry: an administrative change or an access decision.

    ``app`` is the application it concerns; ``subject`` the e-mail or service token a decision
    was about (lower-case), so the log can be filtered by either.
    """

    time: datetime
    kind: str
    detail: Mapping[str, Any]
    app: str | None = None
    subject: str | None = None


class Store(Protocol):
    """What the edge needs from its state, whatever the backend."""

    def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied now."""
        ...

    def schema_version(self) -> int: ...

    def create_tunnel(self, name: str) -> tuple[Tunnel, str]:
        """Create a tunnel with a first credential; returns it and the plaintext secret."""
        ...

    def add_tunnel_credential(self, tunnel_id: str) -> str:
        """Add another secret to a tunnel (a new run token); returns the plaintext secret."""
        ...

    def get_tunnel(self, ref: str) -> Tunnel:
        """Find a live tunnel by id or name; raises NotFound(tunnel_not_found)."""
        ...

    def list_tunnels(self) -> list[Tunnel]: ...

    def delete_tunnel(self, tunnel_id: str) -> None:
        """Delete a tunnel with its routes and credentials; raises NotFound."""
        ...

    def tunnel_secret_hashes(self) -> dict[str, list[str]]:
        """Secret hashes of every live tunnel, keyed by tunnel id (for the edge's cache)."""
        ...

    def add_route(self, tunnel_id: str, hostname: str) -> tuple[Route, bool]:
        """Route a hostname to a tunnel; returns the route and whether it is new."""
        ...

    def list_routes(self) -> list[Route]:
        """Every route, sorted by hostname (feeds ``edge.routes.RouteTable`` directly)."""
        ...

    def delete_route(self, hostname: str) -> Route:
        """Remove a route; returns what it was; raises NotFound(route_not_found)."""
        ...

    def add_admin_token(self) -> str:
        """Mint an admin API token; only its hash is kept."""
        ...

    def verify_admin_token(self, token: str) -> bool: ...

    def audit_events(
        self, limit: int = 100, *, app: str | None = None, email: str | None = None
    ) -> list[AuditEvent]:
        """The newest audit log entries, newest first, optionally only one app's or one
        person's (``email`` also matches a service token name)."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Run several writes as one transaction: all of them happen or none does."""
        ...

    # -- identity providers (NotFound idp_not_found, Conflict idp_exists / idp_in_use) ----------

    def create_idp(self, idp: IdpRecord) -> IdpRecord: ...

    def replace_idp(self, idp: IdpRecord) -> IdpRecord:
        """Replace the settings of the IdP with ``idp.name`` (its type may change too)."""
        ...

    def get_idp(self, name: str) -> IdpRecord: ...

    def list_idps(self) -> list[IdpRecord]:
        """Every IdP, sorted by name."""
        ...

    def delete_idp(self, name: str) -> None:
        """Delete an IdP no application lists; Conflict(idp_in_use) otherwise."""
        ...

    # -- applications (NotFound app_not_found, Conflict app_exists / domain_taken) --------------

    def create_app(self, spec: AppSpec) -> AppRecord:
        """Create an application with a new AUD tag; its IdPs must exist (unknown_idp)."""
        ...

    def replace_app(self, name: str, spec: AppSpec) -> AppRecord:
        """Replace an application's settings; its id, AUD and policies stay."""
        ...

    def get_app(self, name: str) -> AppRecord: ...

    def list_apps(self) -> list[AppRecord]:
        """Every application, sorted by name."""
        ...

    def delete_app(self, name: str) -> AppRecord:
        """Delete an application with its policies; returns what it was."""
        ...

    def get_policies(self, app_name: str) -> AppPolicySet: ...

    def set_policies(self, app_name: str, policies: AppPolicySet) -> AppPolicySet:
        """Replace an application's ordered policy list."""
        ...

    # -- service tokens (NotFound service_token_not_found, Conflict service_token_exists) -------

    def create_service_token(self, name: str, *, duration: int) -> tuple[ServiceToken, str]:
        """Create a token valid for ``duration`` seconds; returns it and the plaintext secret,
        which is never stored (only its SHA-256)."""
        ...

    def list_service_tokens(self) -> list[ServiceToken]: ...

    def delete_service_token(self, name: str) -> ServiceToken: ...

    # -- signing keys ----------------------------------------------------------------------------

    def signing_key_records(self) -> list[KeyRecord]:
        """The stored signing keys, oldest first."""
        ...

    def update_signing_keys(
        self, change: Callable[[list[KeyRecord]], list[KeyRecord] | None]
    ) -> list[KeyRecord]:
        """Read-modify-write of the key set in one transaction, so two edges rotating at once
        cannot both win. ``change`` gets the stored records and returns the new full set, or
        None to leave it; returns the set now stored."""
        ...

    # -- shared secrets ----------------------------------------------------------------------------

    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret every edge of this store shares under ``name``: ``candidate`` is stored
        only when there is none yet (atomically, so edges starting together agree), and the
        stored value is returned."""
        ...

    # -- sessions and revocations ----------------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        """Insert or replace a global session (keyed by ``id_hash``)."""
        ...

    def delete_session(self, id_hash: str) -> bool: ...

    def session_record(self, id_hash: str) -> SessionRecord | None:
        """One stored session, whatever its state (another edge announced a change to it)."""
        ...

    def live_sessions(self, now: float) -> list[SessionRecord]:
        """Sessions neither expired at ``now`` nor revoked."""
        ...

    def purge_expired_sessions(self, now: float) -> int: ...

    def revoke_email_sessions(self, email: str) -> tuple[Revocation, int]:
        """Void every session of one person from now on; returns the revocation and how many
        stored sessions it ended."""
        ...

    def revoke_app_sessions(self, app_name: str) -> Revocation:
        """Void every session's admission to one application from now on."""
        ...

    def revocations(self) -> list[Revocation]: ...

    # -- access decisions --------------------------------------------------------------------

    def record_decision(self, decision: DecisionRecord) -> None: ...

    def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Append several decisions in one transaction (the request path batches them)."""
        ...

    def close(self) -> None: ...


def validate_tunnel_name(name: str) -> str:
    """Check a tunnel name; it must never be mistaken for a tunnel id."""
    if not isinstance(name, str) or not _TUNNEL_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid tunnel name {name!r}",
            code="invalid_name",
            hint='use 1-63 letters, digits, "_", "." or "-", starting with a letter or digit',
        )
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise InvalidInput(
        f"invalid tunnel name {name!r}: it looks like a tunnel id",
        code="invalid_name",
        hint="tunnels are referred to by name or id, so a name cannot have the form of an id",
    )


def normalize_hostname(raw: str, *, allow_wildcard: bool = True) -> str:
    """Lower-case, drop one trailing dot, and check the DNS grammar.

    A wildcard is allowed only as the whole first label (``*.example.com``). Only ASCII
    (punycode) names are accepted: a Unicode name could be spelt several ways, and routing
    must see exactly one.
    """
    hint = 'write a DNS name such as "app.example.com" (IDNs in punycode, "xn--...")'
    if allow_wildcard:
        hint += ' or a wildcard "*.example.com"'
    if not isinstance(raw, str):
        raise InvalidInput("hostname must be a string", code="invalid_hostname", hint=hint)
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        if not allow_wildcard:
            raise InvalidInput(
                f"invalid hostname {raw!r}: wildcards are not allowed here",
                code="invalid_hostname",
                hint=hint,
            )
        labels = labels[1:]
    valid = (
        bool(host)
        and len(host) <= 253
        and bool(labels)
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not valid:
        raise InvalidInput(f"invalid hostname {raw!r}", code="invalid_hostname", hint=hint)
    return host


def open_store(config: EdgeConfig, *, apply_migrations: bool = True) -> Store:
    """Open the store the config names; SQLite is migrated on open unless
    ``apply_migrations`` is False, PostgreSQL only when it is True."""
    if config.store.is_postgres:
        from edge.store.postgres import PostgresStore, read_password_file

        return PostgresStore(
            config.store.url,
            password=read_password_file(config.store.password_file),
            apply_migrations=apply_migrations,
        )
    from edge.store.sqlite import SqliteStore

    path: Path = config.store_path()
    return SqliteStore(path, apply_migrations=apply_migrations)
