"""What every table mixin of a store needs, whichever database holds the tables.

The tables are written once (:mod:`edge.store.access_tables`, :mod:`edge.store.tunnel_tables`)
against this interface; each backend answers it in its own spelling
(:mod:`edge.store.sqlite_tables`, :mod:`edge.store.postgres_tables`): statements are written
with ``?`` placeholders, timestamps, JSON and flags pass through ``_time_in``/``_time_out``,
``_json_in``/``_json_out`` and ``_flag_in``, ``ORDER BY`` text columns in byte order through
``_byte_order``, and every write tells the other edges of a cluster what changed through
``_notify`` (a no-op where one SQLite file serves one edge).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

__all__ = ["StoreTables"]


class StoreTables(ABC):
    """The store's clock, ids and transactions, its database's spelling, and the audit log
    written with them."""

    _clock: Callable[[], datetime]
    _new_id: Callable[[], str]
    _new_secret: Callable[[], str]
    _random_bytes: Callable[[int], bytes]

    # A writing transaction (each backend's own method, whose options differ).
    _transaction: Callable[[], AbstractContextManager[Any]]

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Any]: ...

    def _audit(
        self,
        conn: Any,
        kind: str,
        detail: dict[str, Any],
        *,
        app: str | None = None,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> None:
        """Append to the audit log in the caller's transaction (subjects are e-mail addresses
        or names, kept in lower case so a search by address finds every spelling)."""
        self._run(
            conn,
            "INSERT INTO audit_log (time, kind, detail, app, subject) VALUES (?, ?, ?, ?, ?)",
            (
                self._time_in(time or self._clock()),
                kind,
                self._json_in(detail),
                app,
                subject.lower() if subject else None,
            ),
        )

    @staticmethod
    @abstractmethod
    def _notify(conn: Any, kind: str, ident: str = "") -> None:
        """Tell the other edges what changed, with the transaction."""

    def _one(
        self, conn: Any, statement: str, params: Sequence[object], missing: Exception
    ) -> Any:
        """The first row ``statement`` finds; ``missing`` raised when it finds none."""
        row = self._run(conn, statement, params).fetchone()
        if row is None:
            raise missing
        return row

    # -- what each database spells its own way ---------------------------------------------

    @abstractmethod
    def _run(self, conn: Any, statement: str, params: Sequence[object] = ()) -> Any:
        """Execute ``statement`` (written with ``?`` placeholders); the cursor."""

    @staticmethod
    @abstractmethod
    def _time_in(moment: datetime) -> object: ...

    @staticmethod
    @abstractmethod
    def _time_out(value: Any) -> datetime: ...

    @staticmethod
    @abstractmethod
    def _json_in(value: object) -> object: ...

    @staticmethod
    @abstractmethod
    def _json_out(value: Any) -> Any: ...

    @staticmethod
    @abstractmethod
    def _flag_in(value: bool) -> object: ...

    @staticmethod
    @abstractmethod
    def _byte_order(column: str) -> str:
        """``column`` as ``ORDER BY`` needs it to sort text in byte order."""
