"""The Access runtime tables of the PostgreSQL store: signing keys, shared edge secrets,
sessions, revocations and the access decisions of the audit log.

A mixin of :class:`edge.store.postgres.PostgresStore`, like :mod:`edge.store.sqlite_runtime` is
of the SQLite store. Session writes and decisions are the busy writes (logins, every decision)
and touch only their own rows, so they skip the cluster-wide write lock; key changes take it,
which is what keeps two edges rotating at once from both winning. Key rotations, revocations
and session changes notify the other edges (``keys_rotated``, ``sessions_revoked``,
``session_saved`` / ``session_deleted``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from psycopg.types.json import Jsonb

from edge.store import KeyRecord
from edge.store.access_records import DecisionRecord, Revocation, SessionRecord
from edge.store.access_tables import app_not_found
from edge.store.postgres_tables import Connection, PgTables
from edge.store.sqlite_runtime import _check_key_record, _normalise_email

__all__ = ["PgRuntimeTables"]

_KEY_COLUMNS = "kid, algorithm, private_key_pem, certificate_pem, created_at, not_after"
_SESSION_COLUMNS = "id_hash, email, identity, created_at, expires_at, revoked"


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id_hash=row[0],
        email=row[1],
        identity=row[2],
        created_at=float(row[3]),
        expires_at=float(row[4]),
        revoked=bool(row[5]),
    )


class PgRuntimeTables(PgTables):
    """Signing keys, sessions, revocations and decisions of :class:`edge.store.Store`."""

    # -- signing keys ----------------------------------------------------------------------

    @staticmethod
    def _read_keys(conn: Connection) -> list[KeyRecord]:
        rows = conn.execute(
            f'SELECT {_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid COLLATE "C"'
        ).fetchall()
        return [
            {
                "kid": row[0],
                "algorithm": row[1],
                "private_key_pem": row[2],
                "certificate_pem": row[3],
                "created_at": float(row[4]),
                "not_after": None if row[5] is None else float(row[5]),
            }
            for row in rows
        ]

    def signing_key_records(self) -> list[KeyRecord]:
        with self._reading() as conn:
            return self._read_keys(conn)

    def update_signing_keys(
        self, change: Callable[[list[KeyRecord]], list[KeyRecord] | None]
    ) -> list[KeyRecord]:
        with self._transaction() as conn:
            current = self._read_keys(conn)
            wanted = change([dict(record) for record in current])
            if wanted is None:
                return current
            rows = [_check_key_record(record, index) for index, record in enumerate(wanted)]
            conn.execute("DELETE FROM signing_keys")
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
            before = {str(record["kid"]) for record in current}
            after = {str(row[0]) for row in rows}
            self._audit(
                conn,
                "signing_keys.updated",
                {"added": sorted(after - before), "removed": sorted(before - after)},
            )
            self._notify(conn, "keys_rotated")
            return self._read_keys(conn)

    # -- shared secrets --------------------------------------------------------------------

    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        # Under the write lock, and ON CONFLICT as well: the first edge's value wins and every
        # other edge reads that one back, however many start at once.
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO edge_secrets (name, value, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, candidate, self._clock()),
            ).rowcount
            row = conn.execute(
                "SELECT value FROM edge_secrets WHERE name = %s", (name,)
            ).fetchone()
            if inserted:
                self._audit(conn, "edge_secret.created", {"name": name})
        assert row is not None
        return bytes(row[0])

    # -- sessions and revocations ----------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        with self._transaction(exclusive=False) as conn:
            conn.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id_hash) DO UPDATE SET email = EXCLUDED.email, "
                "identity = EXCLUDED.identity, created_at = EXCLUDED.created_at, "
                "expires_at = EXCLUDED.expires_at, revoked = EXCLUDED.revoked",
                (
                    record.id_hash,
                    record.email.lower(),
                    Jsonb(dict(record.identity)),
                    record.created_at,
                    record.expires_at,
                    record.revoked,
                ),
            )
            self._notify(conn, "session_saved", record.id_hash)

    def delete_session(self, id_hash: str) -> bool:
        with self._transaction(exclusive=False) as conn:
            deleted = conn.execute("DELETE FROM sessions WHERE id_hash = %s", (id_hash,))
            if deleted.rowcount > 0:
                self._notify(conn, "session_deleted", id_hash)
            return deleted.rowcount > 0

    def session_record(self, id_hash: str) -> SessionRecord | None:
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id_hash = %s", (id_hash,)
            ).fetchone()
        return None if row is None else _session_from_row(row)

    def live_sessions(self, now: float) -> list[SessionRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions "
                "WHERE NOT revoked AND expires_at > %s ORDER BY created_at",
                (now,),
            ).fetchall()
        return [_session_from_row(row) for row in rows]

    def purge_expired_sessions(self, now: float) -> int:
        with self._transaction(exclusive=False) as conn:
            return conn.execute("DELETE FROM sessions WHERE expires_at <= %s", (now,)).rowcount

    @staticmethod
    def _revoke(conn: Connection, revocation: Revocation) -> None:
        conn.execute(
            "INSERT INTO revocations (kind, subject, epoch) VALUES (%s, %s, %s) "
            "ON CONFLICT (kind, subject) DO UPDATE SET epoch = EXCLUDED.epoch",
            (revocation.kind, revocation.subject, revocation.epoch),
        )

    def revoke_email_sessions(self, email: str) -> tuple[Revocation, int]:
        address = _normalise_email(email)
        revocation = Revocation("email", address, self._clock().timestamp())
        with self._transaction() as conn:
            ended = conn.execute(
                "UPDATE sessions SET revoked = true WHERE email = %s AND NOT revoked", (address,)
            ).rowcount
            self._revoke(conn, revocation)
            self._audit(
                conn, "sessions.revoked", {"email": address, "sessions": ended}, subject=address
            )
            self._notify(conn, "sessions_revoked", f"email={address}")
        return revocation, ended

    def revoke_app_sessions(self, app_name: str) -> Revocation:
        with self._transaction() as conn:
            row = conn.execute("SELECT aud FROM apps WHERE name = %s", (app_name,)).fetchone()
            if row is None:
                raise app_not_found(app_name)
            revocation = Revocation("app", row[0], self._clock().timestamp())
            self._revoke(conn, revocation)
            self._audit(conn, "sessions.revoked", {"aud": row[0]}, app=app_name)
            self._notify(conn, "sessions_revoked", f"aud={row[0]}")
        return revocation

    def revocations(self) -> list[Revocation]:
        with self._reading() as conn:
            rows = conn.execute(
                'SELECT kind, subject, epoch FROM revocations '
                'ORDER BY kind COLLATE "C", subject COLLATE "C"'
            ).fetchall()
        return [Revocation(row[0], row[1], float(row[2])) for row in rows]

    # -- access decisions ------------------------------------------------------------------

    def record_decision(self, decision: DecisionRecord) -> None:
        self.record_decisions([decision])

    def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        rows = [
            (
                decision.time.astimezone(UTC),
                "access.decision",
                Jsonb(decision.detail()),
                decision.app,
                (decision.email or decision.service_token or "").lower() or None,
            )
            for decision in decisions
        ]
        with self._transaction(exclusive=False) as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO audit_log (time, kind, detail, app, subject) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
