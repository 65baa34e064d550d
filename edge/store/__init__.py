"""The edge's persistent state behind one interface.

The request path never reads the store: the edge keeps a route table and the tunnel secret
hashes in memory and rebuilds them when the admin API reports a change. So the interface is
synchronous (SQLite is local and fast) and the admin path calls it through
``trio.to_thread.run_sync``. Backends: :class:`edge.store.sqlite.SqliteStore` (embedded default);
PostgreSQL for several edges comes later behind the same :class:`Store` protocol.

Errors (codes are the admin API's error codes)::

    EdgeError (edge.errors)
    └── StoreError              500 store_error: the database itself failed
        ├── NotFound            404 tunnel_not_found, route_not_found
        ├── Conflict            409 tunnel_exists, route_exists
        └── InvalidInput        400 invalid_name, invalid_hostname

Routes are :class:`edge.routes.Route` values, so ``RouteTable(store.list_routes())`` builds the
edge's lookup table without conversion.

Names and host names are validated here, not by the callers, so that every way into the store
(admin API, CLI, a future import) accepts exactly the same values.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge.errors import EdgeError
from edge.routes import Route

if TYPE_CHECKING:
    from edge.config import EdgeConfig

__all__ = [
    "AuditEvent",
    "Conflict",
    "InvalidInput",
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
    code = "invalid_input"
    status = 400


@dataclass(frozen=True)
class Tunnel:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class AuditEvent:
    time: datetime
    kind: str
    detail: Mapping[str, Any]


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

    def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        """The newest audit log entries, newest first."""
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


def open_store(config: EdgeConfig) -> Store:
    """Open (and migrate) the store the config names."""
    from edge.store.sqlite import SqliteStore

    path: Path = config.store_path()
    return SqliteStore(path)
