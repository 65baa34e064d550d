"""The embedded SQLite store: one edge, one file, zero setup.

One connection per store, shared by threads under a lock (the admin path runs store calls in
``trio.to_thread.run_sync`` worker threads). The database runs in WAL mode so a reader (for
example ``sqlite3`` opened by an operator) never blocks the edge. Every write is one
``BEGIN IMMEDIATE`` transaction that also appends to the audit log, so the log and the state
never disagree.

Schema changes are versioned migrations in :data:`MIGRATIONS`, applied in order on open and
recorded in ``schema_migrations``. The list is append-only: a released migration is never
edited, a change is a new entry.

Secrets (tunnel secrets, admin tokens, service-token secrets, session ids) are never stored:
only their SHA-256 hex digests, so a copy of the database file does not let anyone in. The one
exception is the Access signing keys, which the edge needs in clear to sign; the file is created
with mode 0600 for that reason.

The Access tables are served by two mixins over the same connection, lock and transactions:
:class:`edge.store.sqlite_access.AccessTables` (IdPs, applications, policies, service tokens)
and :class:`edge.store.sqlite_runtime.RuntimeTables` (signing keys, sessions, revocations,
decisions). :meth:`SqliteStore.batch` groups several
writes into one transaction (``apply`` uses it: a document is applied entirely or not at all).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.store import (
    AuditEvent,
    Conflict,
    NotFound,
    Route,
    StoreError,
    Tunnel,
    normalize_hostname,
    validate_tunnel_name,
)
from edge.store.access_tables import AccessConfigTables
from edge.store.sqlite_runtime import RuntimeTables
from edge.store.sqlite_tables import sql_timestamp
from tunnel.auth import hash_secret

__all__ = ["MIGRATIONS", "Migration", "SqliteStore"]

log = logging.getLogger(__name__)

ADMIN_TOKEN_PREFIX = "tga_"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tunnels, credentials, routes, admin tokens, audit log",
        (
            """CREATE TABLE tunnels (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL,
                deleted_at TEXT
            )""",
            # A deleted tunnel keeps its row (its id stays known) but frees its name.
            "CREATE UNIQUE INDEX tunnels_live_name ON tunnels(name) WHERE deleted_at IS NULL",
            """CREATE TABLE tunnel_credentials (
                id INTEGER PRIMARY KEY,
                tunnel_id TEXT NOT NULL REFERENCES tunnels(id),
                secret_hash TEXT NOT NULL UNIQUE,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX tunnel_credentials_tunnel ON tunnel_credentials(tunnel_id)",
            """CREATE TABLE routes (
                hostname TEXT PRIMARY KEY,
                tunnel_id TEXT NOT NULL REFERENCES tunnels(id),
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX routes_tunnel ON routes(tunnel_id)",
            """CREATE TABLE admin_tokens (
                hash TEXT PRIMARY KEY,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE audit_log (
                id INTEGER PRIMARY KEY,
                time TEXT NOT NULL,
                kind TEXT NOT NULL,
                detail TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "access: idps, apps, policies, service tokens, signing keys, sessions, revocations",
        (
            """CREATE TABLE idps (
                name TEXT PRIMARY KEY,
                type TEXT NOT NULL CHECK (type IN ('oidc', 'github', 'otp')),
                config TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE apps (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                domain TEXT NOT NULL UNIQUE,
                aud TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL CHECK (type IN ('http', 'tcp')),
                session_duration INTEGER NOT NULL,
                idps TEXT NOT NULL,
                cookie_name TEXT NOT NULL,
                header_name TEXT NOT NULL,
                email_header_name TEXT NOT NULL,
                allow_websockets INTEGER NOT NULL,
                allow_encoded_slash INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            """CREATE TABLE policies (
                app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
                position INTEGER NOT NULL,
                name TEXT NOT NULL,
                action TEXT NOT NULL,
                include TEXT NOT NULL,
                require TEXT NOT NULL,
                exclude TEXT NOT NULL,
                PRIMARY KEY (app_id, position),
                UNIQUE (app_id, name)
            )""",
            """CREATE TABLE service_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                client_id TEXT NOT NULL UNIQUE,
                secret_hash TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )""",
            # not_after: when a retired key stops being published (NULL for the active key).
            """CREATE TABLE signing_keys (
                kid TEXT PRIMARY KEY,
                algorithm TEXT NOT NULL,
                private_key_pem TEXT NOT NULL,
                certificate_pem TEXT NOT NULL,
                created_at REAL NOT NULL,
                not_after REAL
            )""",
            """CREATE TABLE sessions (
                id_hash TEXT PRIMARY KEY,
                email TEXT NOT NULL,
                identity TEXT NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX sessions_email ON sessions(email)",
            """CREATE TABLE revocations (
                kind TEXT NOT NULL CHECK (kind IN ('email', 'app')),
                subject TEXT NOT NULL,
                epoch REAL NOT NULL,
                PRIMARY KEY (kind, subject)
            )""",
            "ALTER TABLE audit_log ADD COLUMN app TEXT",
            "ALTER TABLE audit_log ADD COLUMN subject TEXT",
            "CREATE INDEX audit_log_app ON audit_log(app, id)",
            "CREATE INDEX audit_log_subject ON audit_log(subject, id)",
        ),
    ),
    # Version 3 is PostgreSQL's cluster tables, which a single SQLite edge never needs; the
    # numbers stay shared so one version means the same tables on both backends.
    Migration(
        4,
        "edge secrets: values every edge of the store shares (the access sealing secret)",
        (
            """CREATE TABLE edge_secrets (
                name TEXT PRIMARY KEY,
                value BLOB NOT NULL,
                created_at TEXT NOT NULL
            )""",
        ),
    ),
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def _new_id() -> str:
    return str(uuid.uuid4())


_timestamp = sql_timestamp


def _tunnel_not_found(ref: str) -> NotFound:
    return NotFound(
        f"no tunnel named or with id {ref!r}",
        code="tunnel_not_found",
        hint="list tunnels with GET /v1/tunnels",
    )


class SqliteStore(RuntimeTables, AccessConfigTables):
    """:class:`edge.store.Store` on one SQLite file.

    Pending migrations are applied on open unless ``apply_migrations`` is False (the
    ``migrate`` command opens without them to report what it applies). ``clock``,
    ``new_secret``, ``new_id`` and ``random_bytes`` are injectable so tests control time and
    randomness.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], datetime] = _utc_now,
        new_secret: Callable[[], str] = _new_secret,
        new_id: Callable[[], str] = _new_id,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        apply_migrations: bool = True,
    ) -> None:
        self.path = path
        self._clock = clock
        self._new_secret = new_secret
        self._new_id = new_id
        self._random_bytes = random_bytes
        # Re-entrant so that a batch() can hold the lock while the writes inside it take it.
        self._lock = threading.RLock()
        self._in_batch = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                # The file holds hashes and the audit log: private from the first byte.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the store at {path}: {exc}",
                hint="check that edge.state_dir exists and is writable by the edge",
            ) from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if apply_migrations:
                self.migrate()
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._in_batch:
                # The enclosing batch commits or rolls back everything at once.
                try:
                    yield self._conn
                except sqlite3.Error as exc:
                    raise StoreError(f"store write failed: {exc}") from exc
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store transaction failed to start: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"store write failed: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"store transaction failed to commit: {exc}") from exc

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:
            if self._in_batch:
                yield
                return
            with self._transaction():
                self._in_batch = True
                try:
                    yield
                finally:
                    self._in_batch = False

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    def _audit(
        self,
        conn: sqlite3.Connection,
        kind: str,
        detail: dict[str, Any],
        *,
        app: str | None = None,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit_log (time, kind, detail, app, subject) VALUES (?, ?, ?, ?, ?)",
            (
                _timestamp(time or self._clock()),
                kind,
                json.dumps(detail, sort_keys=True),
                app,
                subject.lower() if subject else None,
            ),
        )

    # -- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._reading() as conn:
            return self._current_version(conn)

    @staticmethod
    def _current_version(conn: sqlite3.Connection) -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if exists is None:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[int]:
        applied: list[int] = []
        known = MIGRATIONS[-1].version
        with self._transaction() as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )"""
            )
            current = self._current_version(conn)
            if current > known:
                raise StoreError(
                    f"the store at {self.path} has schema version {current}, "
                    f"newer than this edge knows ({known})",
                    hint="upgrade tunnelgate on this host before serving from this store",
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _timestamp(self._clock())),
                )
                applied.append(migration.version)
        for version in applied:
            log.info("store %s: applied schema migration %d", self.path, version)
        return applied

    # -- tunnels ---------------------------------------------------------------------------

    def create_tunnel(self, name: str) -> tuple[Tunnel, str]:
        validate_tunnel_name(name)
        now = self._clock().astimezone(UTC)
        tunnel = Tunnel(id=self._new_id(), name=name, created_at=now)
        secret = self._new_secret()
        with self._transaction() as conn:
            taken = conn.execute(
                "SELECT id FROM tunnels WHERE name = ? AND deleted_at IS NULL", (name,)
            ).fetchone()
            if taken is not None:
                raise Conflict(
                    f"a tunnel named {name!r} already exists",
                    code="tunnel_exists",
                    hint="pick another name, or delete the existing tunnel first",
                )
            conn.execute(
                "INSERT INTO tunnels (id, name, created_at) VALUES (?, ?, ?)",
                (tunnel.id, name, _timestamp(now)),
            )
            self._insert_credential(conn, tunnel.id, secret)
            self._audit(conn, "tunnel.created", {"tunnel_id": tunnel.id, "name": name})
        return tunnel, secret

    def _insert_credential(self, conn: sqlite3.Connection, tunnel_id: str, secret: str) -> None:
        conn.execute(
            "INSERT INTO tunnel_credentials (tunnel_id, secret_hash, created_at) VALUES (?, ?, ?)",
            (tunnel_id, hash_secret(secret), _timestamp(self._clock())),
        )

    def add_tunnel_credential(self, tunnel_id: str) -> str:
        secret = self._new_secret()
        with self._transaction() as conn:
            if self._live_tunnel_row(conn, tunnel_id) is None:
                raise _tunnel_not_found(tunnel_id)
            self._insert_credential(conn, tunnel_id, secret)
            self._audit(conn, "tunnel.credential_added", {"tunnel_id": tunnel_id})
        return secret

    @staticmethod
    def _live_tunnel_row(conn: sqlite3.Connection, tunnel_id: str) -> tuple[str, str, str] | None:
        row = conn.execute(
            "SELECT id, name, created_at FROM tunnels WHERE id = ? AND deleted_at IS NULL",
            (tunnel_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def get_tunnel(self, ref: str) -> Tunnel:
        with self._reading() as conn:
            row = self._live_tunnel_row(conn, ref)
            if row is None:
                found = conn.execute(
                    "SELECT id, name, created_at FROM tunnels "
                    "WHERE name = ? AND deleted_at IS NULL",
                    (ref,),
                ).fetchone()
                row = None if found is None else (found[0], found[1], found[2])
        if row is None:
            raise _tunnel_not_found(ref)
        return Tunnel(id=row[0], name=row[1], created_at=datetime.fromisoformat(row[2]))

    def list_tunnels(self) -> list[Tunnel]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at FROM tunnels WHERE deleted_at IS NULL ORDER BY name"
            ).fetchall()
        return [Tunnel(id=r[0], name=r[1], created_at=datetime.fromisoformat(r[2])) for r in rows]

    def delete_tunnel(self, tunnel_id: str) -> None:
        with self._transaction() as conn:
            row = self._live_tunnel_row(conn, tunnel_id)
            if row is None:
                raise _tunnel_not_found(tunnel_id)
            routes = [
                r[0]
                for r in conn.execute(
                    "SELECT hostname FROM routes WHERE tunnel_id = ? ORDER BY hostname",
                    (tunnel_id,),
                )
            ]
            conn.execute("DELETE FROM routes WHERE tunnel_id = ?", (tunnel_id,))
            conn.execute("DELETE FROM tunnel_credentials WHERE tunnel_id = ?", (tunnel_id,))
            conn.execute(
                "UPDATE tunnels SET deleted_at = ? WHERE id = ?",
                (_timestamp(self._clock()), tunnel_id),
            )
            self._audit(
                conn,
                "tunnel.deleted",
                {"tunnel_id": tunnel_id, "name": row[1], "routes": routes},
            )

    def tunnel_secret_hashes(self) -> dict[str, list[str]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT c.tunnel_id, c.secret_hash FROM tunnel_credentials c "
                "JOIN tunnels t ON t.id = c.tunnel_id WHERE t.deleted_at IS NULL ORDER BY c.id"
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
                raise _tunnel_not_found(tunnel_id)
            existing = conn.execute(
                "SELECT r.tunnel_id, t.name FROM routes r JOIN tunnels t ON t.id = r.tunnel_id "
                "WHERE r.hostname = ?",
                (host,),
            ).fetchone()
            if existing is not None:
                if existing[0] == tunnel_id:
                    return Route(host, tunnel_id, tunnel[1]), False
                raise Conflict(
                    f"{host} is already routed to tunnel {existing[1]!r}",
                    code="route_exists",
                    hint=f"delete the route first: DELETE /v1/routes/{host}",
                )
            conn.execute(
                "INSERT INTO routes (hostname, tunnel_id, created_at) VALUES (?, ?, ?)",
                (host, tunnel_id, _timestamp(self._clock())),
            )
            self._audit(conn, "route.added", {"hostname": host, "tunnel_id": tunnel_id})
        return Route(host, tunnel_id, tunnel[1]), True

    def list_routes(self) -> list[Route]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT r.hostname, r.tunnel_id, t.name FROM routes r "
                "JOIN tunnels t ON t.id = r.tunnel_id ORDER BY r.hostname"
            ).fetchall()
        return [Route(r[0], r[1], r[2]) for r in rows]

    def delete_route(self, hostname: str) -> Route:
        host = normalize_hostname(hostname)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT r.tunnel_id, t.name FROM routes r JOIN tunnels t ON t.id = r.tunnel_id "
                "WHERE r.hostname = ?",
                (host,),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"no route for {host}",
                    code="route_not_found",
                    hint="list routes with GET /v1/routes",
                )
            conn.execute("DELETE FROM routes WHERE hostname = ?", (host,))
            self._audit(conn, "route.deleted", {"hostname": host, "tunnel_id": row[0]})
        return Route(host, row[0], row[1])

    # -- admin tokens ----------------------------------------------------------------------

    def add_admin_token(self) -> str:
        token = ADMIN_TOKEN_PREFIX + self._new_secret()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?)",
                (hash_secret(token), _timestamp(self._clock())),
            )
            self._audit(conn, "admin_token.created", {})
        return token

    def verify_admin_token(self, token: str) -> bool:
        presented = hash_secret(token)
        with self._reading() as conn:
            stored = [row[0] for row in conn.execute("SELECT hash FROM admin_tokens")]
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
            rows = conn.execute(
                "SELECT time, kind, detail, app, subject FROM audit_log "
                f"{where}ORDER BY id DESC LIMIT ?",
                (*values, max(0, limit)),
            ).fetchall()
        return [
            AuditEvent(
                time=datetime.fromisoformat(r[0]),
                kind=r[1],
                detail=json.loads(r[2]),
                app=r[3],
                subject=r[4],
            )
            for r in rows
        ]
