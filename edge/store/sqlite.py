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

The tables are served by mixins over the same connection, lock and transactions, written once
for both backends where the statements allow it: :class:`edge.store.tunnel_tables.TunnelConfigTables`
(tunnels, routes, admin tokens, the audit log), :class:`edge.store.access_tables.AccessConfigTables`
(IdPs, applications, policies, service tokens), and the SQLite-only
:class:`edge.store.sqlite_runtime.RuntimeTables` (signing keys, sessions, revocations,
decisions); :mod:`edge.store.sqlite_tables` is SQLite's spelling for the shared ones. :meth:`SqliteStore.batch` groups several
writes into one transaction (``apply`` uses it: a document is applied entirely or not at all).
"""

from __future__ import annotations

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

from edge.store import (
    StoreError,
)
from edge.store.access_tables import AccessConfigTables
from edge.store.sqlite_runtime import RuntimeTables
from edge.store.sqlite_tables import sql_timestamp
from edge.store.tunnel_tables import TunnelConfigTables

__all__ = ["MIGRATIONS", "Migration", "SqliteStore"]

log = logging.getLogger(__name__)



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


class SqliteStore(RuntimeTables, AccessConfigTables, TunnelConfigTables):
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
