"""The Access runtime tables of the SQLite store: signing keys, sessions, revocations and the
access decisions of the audit log.

Like :mod:`edge.store.access_tables` it is a mixin of :class:`edge.store.sqlite.SqliteStore`,
sharing its connection, lock and transactions. Session ids are never stored, only
:func:`edge.store.access_records.session_id_hash` of them; signing keys are stored in clear
because the edge signs with them, which is why the database file is private (mode 0600).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from edge.store import InvalidInput, KeyRecord
from edge.store.access_records import DecisionRecord, Revocation, SessionRecord
from edge.store.access_tables import app_not_found
from edge.store.sqlite_tables import SqliteTables, sql_timestamp

__all__ = ["RuntimeTables"]

_KEY_COLUMNS = "kid, algorithm, private_key_pem, certificate_pem, created_at, not_after"


def _session_from_row(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(
        id_hash=row[0],
        email=row[1],
        identity=json.loads(row[2]),
        created_at=float(row[3]),
        expires_at=float(row[4]),
        revoked=bool(row[5]),
    )


def _check_key_record(record: KeyRecord, index: int) -> tuple[object, ...]:
    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidInput("expected a string", code="invalid_key", key_path=f"[{index}].{key}")
        return value

    created_at, not_after = record.get("created_at"), record.get("not_after")
    if not isinstance(created_at, int | float):
        raise InvalidInput(
            "expected a number", code="invalid_key", key_path=f"[{index}].created_at"
        )
    if not_after is not None and not isinstance(not_after, int | float):
        raise InvalidInput(
            "expected a number or null", code="invalid_key", key_path=f"[{index}].not_after"
        )
    return (
        text("kid"),
        text("algorithm"),
        text("private_key_pem"),
        text("certificate_pem"),
        float(created_at),
        None if not_after is None else float(not_after),
    )


def _normalise_email(email: str) -> str:
    text = email.strip().lower() if isinstance(email, str) else ""
    if text.count("@") != 1 or not all(text.split("@")) or any(c.isspace() for c in text):
        raise InvalidInput(
            f"not an e-mail address: {email!r}", code="invalid_email", key_path="email"
        )
    return text


class RuntimeTables(SqliteTables):
    """Signing keys, sessions, revocations and decisions of :class:`edge.store.Store`."""

    # -- signing keys ----------------------------------------------------------------------

    @staticmethod
    def _read_keys(conn: sqlite3.Connection) -> list[KeyRecord]:
        rows = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid"
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
            conn.executemany(
                f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            before = {str(record["kid"]) for record in current}
            after = {str(row[0]) for row in rows}
            self._audit(
                conn,
                "signing_keys.updated",
                {"added": sorted(after - before), "removed": sorted(before - after)},
            )
            return self._read_keys(conn)

    # -- shared secrets --------------------------------------------------------------------

    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO edge_secrets (name, value, created_at) VALUES (?, ?, ?)",
                (name, candidate, sql_timestamp(self._clock())),
            ).rowcount
            row = conn.execute("SELECT value FROM edge_secrets WHERE name = ?", (name,)).fetchone()
            if inserted:
                self._audit(conn, "edge_secret.created", {"name": name})
        return bytes(row[0])

    # -- sessions and revocations ----------------------------------------------------------

    def save_session(self, record: SessionRecord) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sessions (id_hash, email, identity, created_at, "
                "expires_at, revoked) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id_hash,
                    record.email.lower(),
                    json.dumps(dict(record.identity), sort_keys=True),
                    record.created_at,
                    record.expires_at,
                    int(record.revoked),
                ),
            )

    def delete_session(self, id_hash: str) -> bool:
        with self._transaction() as conn:
            deleted = conn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
            return deleted.rowcount > 0

    def session_record(self, id_hash: str) -> SessionRecord | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT id_hash, email, identity, created_at, expires_at, revoked FROM sessions "
                "WHERE id_hash = ?",
                (id_hash,),
            ).fetchone()
        return None if row is None else _session_from_row(row)

    def live_sessions(self, now: float) -> list[SessionRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id_hash, email, identity, created_at, expires_at, revoked FROM sessions "
                "WHERE revoked = 0 AND expires_at > ? ORDER BY created_at",
                (now,),
            ).fetchall()
        return [_session_from_row(row) for row in rows]

    def purge_expired_sessions(self, now: float) -> int:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount

    def _revoke(self, conn: sqlite3.Connection, revocation: Revocation) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO revocations (kind, subject, epoch) VALUES (?, ?, ?)",
            (revocation.kind, revocation.subject, revocation.epoch),
        )

    def revoke_email_sessions(self, email: str) -> tuple[Revocation, int]:
        address = _normalise_email(email)
        revocation = Revocation("email", address, self._clock().timestamp())
        with self._transaction() as conn:
            ended = conn.execute(
                "UPDATE sessions SET revoked = 1 WHERE email = ? AND revoked = 0", (address,)
            ).rowcount
            self._revoke(conn, revocation)
            self._audit(
                conn, "sessions.revoked", {"email": address, "sessions": ended}, subject=address
            )
        return revocation, ended

    def revoke_app_sessions(self, app_name: str) -> Revocation:
        with self._transaction() as conn:
            row = conn.execute("SELECT aud FROM apps WHERE name = ?", (app_name,)).fetchone()
            if row is None:
                raise app_not_found(app_name)
            revocation = Revocation("app", row[0], self._clock().timestamp())
            self._revoke(conn, revocation)
            self._audit(conn, "sessions.revoked", {"aud": row[0]}, app=app_name)
        return revocation

    def revocations(self) -> list[Revocation]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT kind, subject, epoch FROM revocations ORDER BY kind, subject"
            ).fetchall()
        return [Revocation(row[0], row[1], float(row[2])) for row in rows]

    # -- access decisions ------------------------------------------------------------------

    def record_decision(self, decision: DecisionRecord) -> None:
        self.record_decisions([decision])

    def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        rows = [
            (
                sql_timestamp(decision.time),
                "access.decision",
                json.dumps(decision.detail(), sort_keys=True),
                decision.app,
                (decision.email or decision.service_token or "").lower() or None,
            )
            for decision in decisions
        ]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO audit_log (time, kind, detail, app, subject) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
