"""The tunnels, routes, admin tokens and audit log of the store, written once for both
backends (their spelling: :class:`edge.store.store_tables.StoreTables`).

A tunnel is deleted softly (``deleted_at``) so its id is never reused; its routes and
credentials go at once. Admin tokens and tunnel credentials are kept as hashes only. Writes
notify the other edges with ``tunnel_created``, ``credential_added``, ``tunnel_deleted``,
``route_added``, ``route_deleted`` and ``admin_token_added``.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from edge.store import (
    AuditEvent,
    Conflict,
    NotFound,
    Route,
    Tunnel,
    normalize_hostname,
    validate_tunnel_name,
)
from edge.store.store_tables import StoreTables
from tunnel.auth import hash_secret

__all__ = ["ADMIN_TOKEN_PREFIX", "TunnelConfigTables", "tunnel_not_found"]

ADMIN_TOKEN_PREFIX = "tga_"
# The tunnel a hostname is routed to: its id and name.
_ROUTE_OWNER = (
    "SELECT r.tunnel_id, t.name FROM routes r JOIN tunnels t ON t.id = r.tunnel_id "
    "WHERE r.hostname = ?"
)


def tunnel_not_found(ref: str) -> NotFound:
    return NotFound(
        f"no tunnel named or with id {ref!r}",
        code="tunnel_not_found",
        hint="list tunnels with GET /v1/tunnels",
    )


class TunnelConfigTables(StoreTables):
    """The tunnel, route, admin-token and audit-log methods of :class:`edge.store.Store`."""

    # -- tunnels ---------------------------------------------------------------------------

    def create_tunnel(self, name: str) -> tuple[Tunnel, str]:
        validate_tunnel_name(name)
        now = self._clock().astimezone(UTC)
        tunnel = Tunnel(id=self._new_id(), name=name, created_at=now)
        secret = self._new_secret()
        with self._transaction() as conn:
            taken = self._run(
                conn, "SELECT id FROM tunnels WHERE name = ? AND deleted_at IS NULL", (name,)
            ).fetchone()
            if taken is not None:
                raise Conflict(
                    f"a tunnel named {name!r} already exists",
                    code="tunnel_exists",
                    hint="pick another name, or delete the existing tunnel first",
                )
            self._run(
                conn,
                "INSERT INTO tunnels (id, name, created_at) VALUES (?, ?, ?)",
                (tunnel.id, name, self._time_in(now)),
            )
            self._insert_credential(conn, tunnel.id, secret)
            self._audit(conn, "tunnel.created", {"tunnel_id": tunnel.id, "name": name})
            self._notify(conn, "tunnel_created", tunnel.id)
        return tunnel, secret

    def _insert_credential(self, conn: Any, tunnel_id: str, secret: str) -> None:
        self._run(
            conn,
            "INSERT INTO tunnel_credentials (tunnel_id, secret_hash, created_at) VALUES (?, ?, ?)",
            (tunnel_id, hash_secret(secret), self._time_in(self._clock())),
        )

    def add_tunnel_credential(self, tunnel_id: str) -> str:
        secret = self._new_secret()
        with self._transaction() as conn:
            if self._live_tunnel_row(conn, tunnel_id) is None:
                raise tunnel_not_found(tunnel_id)
            self._insert_credential(conn, tunnel_id, secret)
            self._audit(conn, "tunnel.credential_added", {"tunnel_id": tunnel_id})
            self._notify(conn, "credential_added", tunnel_id)
        return secret

    def _live_tunnel_row(
        self, conn: Any, ref: str, *, by_name: bool = False
    ) -> tuple[str, str, datetime] | None:
        column = "name" if by_name else "id"
        row = self._run(
            conn,
            f"SELECT id, name, created_at FROM tunnels WHERE {column} = ? AND deleted_at IS NULL",
            (ref,),
        ).fetchone()
        return None if row is None else (row[0], row[1], self._time_out(row[2]))

    def get_tunnel(self, ref: str) -> Tunnel:
        with self._reading() as conn:
            row = self._live_tunnel_row(conn, ref) or self._live_tunnel_row(conn, ref, by_name=True)
        if row is None:
            raise tunnel_not_found(ref)
        return Tunnel(id=row[0], name=row[1], created_at=row[2])

    def list_tunnels(self) -> list[Tunnel]:
        with self._reading() as conn:
            rows = self._run(
                conn,
                "SELECT id, name, created_at FROM tunnels WHERE deleted_at IS NULL "
                f"ORDER BY {self._byte_order('name')}",
            ).fetchall()
        return [Tunnel(id=r[0], name=r[1], created_at=self._time_out(r[2])) for r in rows]

    def delete_tunnel(self, tunnel_id: str) -> None:
        with self._transaction() as conn:
            row = self._live_tunnel_row(conn, tunnel_id)
            if row is None:
                raise tunnel_not_found(tunnel_id)
            routes = [
                r[0]
                for r in self._run(
                    conn,
                    "SELECT hostname FROM routes WHERE tunnel_id = ? "
                    f"ORDER BY {self._byte_order('hostname')}",
                    (tunnel_id,),
                )
            ]
            self._run(conn, "DELETE FROM routes WHERE tunnel_id = ?", (tunnel_id,))
            self._run(conn, "DELETE FROM tunnel_credentials WHERE tunnel_id = ?", (tunnel_id,))
            self._run(
                conn,
                "UPDATE tunnels SET deleted_at = ? WHERE id = ?",
                (self._time_in(self._clock()), tunnel_id),
            )
            self._audit(
                conn,
                "tunnel.deleted",
                {"tunnel_id": tunnel_id, "name": row[1], "routes": routes},
            )
            self._notify(conn, "tunnel_deleted", tunnel_id)

    def tunnel_secret_hashes(self) -> dict[str, list[str]]:
        with self._reading() as conn:
            rows = self._run(
                conn,
                "SELECT c.tunnel_id, c.secret_hash FROM tunnel_credentials c "
                "JOIN tunnels t ON t.id = c.tunnel_id WHERE t.deleted_at IS NULL ORDER BY c.id",
            ).fetchall()
        hashes: dict[str, list[str]] = {}
        for tunnel_id, secret_hash in rows:
            hashes.setdefault(tunnel_id, []).append(secret_hash)
        return hashes

    # -- routes ----------------------------------------------------------------------------

    def add_route(self, tunnel_id: str, hostname: str) -> tuple[Route, bool]:
        host = normalize_hostname(hostname)
        with self._transaction() as conn:
            tunnel = self._live_tunnel_row(conn, tunnel_id)
            if tunnel is None:
                raise tunnel_not_found(tunnel_id)
            existing = self._run(conn, _ROUTE_OWNER, (host,)).fetchone()
            if existing is not None:
                if existing[0] == tunnel_id:
                    return Route(host, tunnel_id, tunnel[1]), False
                raise Conflict(
                    f"{host} is already routed to tunnel {existing[1]!r}",
                    code="route_exists",
                    hint=f"delete the route first: DELETE /v1/routes/{host}",
                )
            self._run(
                conn,
                "INSERT INTO routes (hostname, tunnel_id, created_at) VALUES (?, ?, ?)",
                (host, tunnel_id, self._time_in(self._clock())),
            )
            self._audit(conn, "route.added", {"hostname": host, "tunnel_id": tunnel_id})
            self._notify(conn, "route_added", tunnel_id)
        return Route(host, tunnel_id, tunnel[1]), True

    def list_routes(self) -> list[Route]:
        with self._reading() as conn:
            rows = self._run(
                conn,
                "SELECT r.hostname, r.tunnel_id, t.name FROM routes r "
                f"JOIN tunnels t ON t.id = r.tunnel_id ORDER BY {self._byte_order('r.hostname')}",
            ).fetchall()
        return [Route(r[0], r[1], r[2]) for r in rows]

    def delete_route(self, hostname: str) -> Route:
        host = normalize_hostname(hostname)
        with self._transaction() as conn:
            row = self._one(
                conn,
                _ROUTE_OWNER,
                (host,),
                NotFound(
                    f"no route for {host}",
                    code="route_not_found",
                    hint="list routes with GET /v1/routes",
                ),
            )
            self._run(conn, "DELETE FROM routes WHERE hostname = ?", (host,))
            self._audit(conn, "route.deleted", {"hostname": host, "tunnel_id": row[0]})
            self._notify(conn, "route_deleted", row[0])
        return Route(host, row[0], row[1])

    # -- admin tokens ----------------------------------------------------------------------

    def add_admin_token(self) -> str:
        token = ADMIN_TOKEN_PREFIX + self._new_secret()
        with self._transaction() as conn:
            self._run(
                conn,
                "INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?)",
                (hash_secret(token), self._time_in(self._clock())),
            )
            self._audit(conn, "admin_token.created", {})
            self._notify(conn, "admin_token_added")
        return token

    def verify_admin_token(self, token: str) -> bool:
        presented = hash_secret(token)
        with self._reading() as conn:
            stored = [row[0] for row in self._run(conn, "SELECT hash FROM admin_tokens")]
        # Compare against every stored hash so the time taken says nothing about which matched.
        matched = False
        for candidate in stored:
            matched |= hmac.compare_digest(presented, candidate)
        return matched

    # -- audit log -------------------------------------------------------------------------

    def audit_events(
        self, limit: int = 100, *, app: str | None = None, email: str | None = None
    ) -> list[AuditEvent]:
        conditions: list[str] = []
        values: list[object] = []
        if app is not None:
            conditions.append("app = ?")
            values.append(app)
        if email is not None:
            conditions.append("subject = ?")
            values.append(email.lower())
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        with self._reading() as conn:
            rows = self._run(
                conn,
                "SELECT time, kind, detail, app, subject FROM audit_log "
                f"{where}ORDER BY id DESC LIMIT ?",
                (*values, max(0, limit)),
            ).fetchall()
        return [
            AuditEvent(
                time=self._time_out(r[0]),
                kind=r[1],
                detail=self._json_out(r[2]),
                app=r[3],
                subject=r[4],
            )
            for r in rows
        ]
