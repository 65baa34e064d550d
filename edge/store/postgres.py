"""The PostgreSQL store: several edges on one database.

It implements :class:`edge.store.Store` with the same validation, error codes and audit entries
as :class:`edge.store.sqlite.SqliteStore`, on psycopg 3's synchronous API. One connection per
store, shared by threads under a lock (the admin path runs store calls in worker threads); the
store reconnects on the next call after the connection was lost, holding back between attempts
so a database that is down is not hammered.

Writes are transactions that take one cluster-wide advisory lock (:data:`WRITE_LOCK`) first, so
they are serialised across edges the way SQLite's ``BEGIN IMMEDIATE`` serialises them on one
host: two edges creating the same tunnel name, or rotating keys at once, cannot both win.
Appending Access decisions and mirroring sessions skip that lock; they only ever touch their
own rows.

Every administrative write also sends ``NOTIFY tunnelgate, '<kind>:<id>'`` in its transaction
(kinds are :class:`edge.admin.ChangeKind` values plus ``session_saved``, ``session_deleted`` and
``admin_token_added``), so the notification goes out exactly when the change commits and never
for a change that rolled back. :mod:`edge.cluster` listens and rebuilds each edge's snapshots.

Errors::

    StoreError (edge.store)
    └── StoreUnavailable   503 store_unavailable: the database cannot be reached right now;
                           nothing was written, retrying later can succeed

Secrets are stored as in SQLite: only SHA-256 digests, except the Access signing keys.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from edge.store import (
    StoreError,
)
from edge.store.access_tables import AccessConfigTables
from edge.store.postgres_cluster import PgClusterTables
from edge.store.postgres_runtime import PgRuntimeTables
from edge.store.schema_pg import PG_MIGRATIONS
from edge.store.tunnel_tables import TunnelConfigTables

__all__ = [
    "NOTIFY_CHANNEL",
    "WRITE_LOCK",
    "PostgresStore",
    "StoreUnavailable",
    "connection_options",
    "is_postgres_url",
    "read_password_file",
    "redact_url",
]

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tunnelgate"
WRITE_LOCK = 0x7467_0001
"""Advisory lock key every administrative write transaction takes first."""
MIGRATION_LOCK = 0x7467_0002
CONNECT_TIMEOUT = 5
RETRY_MIN = 0.25
RETRY_MAX = 5.0


class StoreUnavailable(StoreError):
    """The database cannot be reached; the write was not made (retryable)."""

    code = "store_unavailable"
    status = 503

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(
            message,
            hint=hint
            or "the edge keeps serving from memory; retry once PostgreSQL is reachable again",
        )


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without a password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}@{location}"


def read_password_file(path: Path | None) -> str | None:
    """The database password from its file (first line), or None to let libpq decide
    (``~/.pgpass``, ``PGPASSWORD``)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreError(
            f"cannot read the store password file {path}: {exc.strerror or exc}",
            hint="store.password_file must be readable by the edge",
        ) from None
    return text.splitlines()[0] if text.strip() else None


def connection_options(url: str, password: str | None) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect``: autocommit, a bounded connect, UTC times
    (added to any ``options`` the URL already carries, such as a search_path)."""
    given = str(conninfo_to_dict(url).get("options") or "")
    options: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "options": f"{given} -c TimeZone=UTC".strip(),
        "application_name": "tunnelgate-edge",
    }
    if password:
        options["password"] = password
    return options


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def _new_id() -> str:
    return str(uuid.uuid4())


class PostgresStore(PgRuntimeTables, PgClusterTables, AccessConfigTables, TunnelConfigTables):
    """:class:`edge.store.Store` on a PostgreSQL database named by ``url``.

    ``clock``, ``new_secret``, ``new_id`` and ``random_bytes`` are injectable like SQLite's;
    ``monotonic`` paces reconnect attempts. Pending migrations are applied on open unless
    ``apply_migrations`` is False.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
        new_secret: Callable[[], str] = _new_secret,
        new_id: Callable[[], str] = _new_id,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        monotonic: Callable[[], float] = time.monotonic,
        apply_migrations: bool = True,
        password: str | None = None,
    ) -> None:
        self.url = url
        self._password = password
        self._clock = clock
        self._new_secret = new_secret
        self._new_id = new_id
        self._random_bytes = random_bytes
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._in_batch = False
        self._conn: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN
        self._closed = False
        self.available = False
        """Whether the last attempt to use the database succeeded (store health)."""
        self.last_error = ""
        try:
            self._connection()
            if apply_migrations:
                self.migrate()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, reconnecting when the last one was lost."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._closed:
            raise StoreError("the store is closed")
        if conn is not None:
            conn.close()
            self._conn = None
        now = self._monotonic()
        if now < self._retry_at:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {self.last_error}")
        try:
            self._conn = psycopg.connect(self.url, **connection_options(self.url, self._password))
        except psycopg.Error as exc:
            self._mark_down(exc)
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {redact_url(self.url)}: {self.last_error}"
            ) from exc
        if not self.available:
            log.info("store connected to %s", redact_url(self.url))
        self.available = True
        self._retry_delay = RETRY_MIN
        return self._conn

    def _mark_down(self, exc: BaseException) -> None:
        first_line = str(exc).strip().splitlines()
        self.last_error = first_line[0] if first_line else type(exc).__name__
        if self.available:
            log.warning("store lost PostgreSQL at %s: %s", redact_url(self.url), self.last_error)
        self.available = False
        self._retry_at = self._monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _failure(self, exc: psycopg.Error, what: str) -> StoreError:
        """Map a driver error: a lost connection is retryable, anything else is a bug or a
        constraint the checks above did not catch."""
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
            self._conn is not None and (self._conn.broken or self._conn.closed)
        ):
            self._mark_down(exc)
            return StoreUnavailable(f"store {what} failed: PostgreSQL is unreachable")
        return StoreError(f"store {what} failed: {exc}")

    def ping(self) -> bool:
        """One round trip; updates :attr:`available` (the edge's store health)."""
        try:
            with self._reading() as conn:
                conn.execute("SELECT 1")
        except StoreError:
            return False
        return True

    @contextmanager
    def _transaction(self, *, exclusive: bool = True) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            if self._in_batch:
                # The enclosing batch commits or rolls back everything at once.
                assert self._conn is not None
                try:
                    yield self._conn
                except psycopg.Error as exc:
                    raise self._failure(exc, "write") from exc
                return
            conn = self._connection()
            try:
                with conn.transaction():
                    if exclusive:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    yield conn
            except psycopg.Error as exc:
                raise self._failure(exc, "write") from exc

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
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.Error as exc:
                raise self._failure(exc, "read") from exc

    @staticmethod
    def _notify(conn: psycopg.Connection[Any], kind: str, ident: str = "") -> None:
        """Tell every listening edge, at commit, that ``kind`` changed for ``ident``."""
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{kind}:{ident}"))

    # -- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._reading() as conn:
            return self._current_version(conn)

    @staticmethod
    def _current_version(conn: psycopg.Connection[Any]) -> int:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0) if row else 0

    def migrate(self) -> list[int]:
        applied: list[int] = []
        known = PG_MIGRATIONS[-1].version
        with self._transaction(exclusive=False) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL
                )"""
            )
            current = self._current_version(conn)
            if current > known:
                raise StoreError(
                    f"the store at {redact_url(self.url)} has schema version {current}, "
                    f"newer than this edge knows ({known})",
                    hint="upgrade tunnelgate on this host before serving from this store",
                )
            for migration in PG_MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES (%s, %s, %s)",
                    (migration.version, migration.name, self._clock()),
                )
                applied.append(migration.version)
        for version in applied:
            log.info("store %s: applied schema migration %d", redact_url(self.url), version)
        return applied
