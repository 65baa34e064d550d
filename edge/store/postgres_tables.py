"""The PostgreSQL spelling of the store's tables (:class:`edge.store.store_tables.StoreTables`),
for every table mixin of :class:`edge.store.postgres.PostgresStore`.

Statements take ``%s`` placeholders, timestamps are ``timestamptz``, JSON is ``jsonb``, flags
are booleans, text sorts with ``COLLATE "C"`` (byte order, as on SQLite), and every write
notifies the other edges (``PostgresStore._notify``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from edge.store.store_tables import StoreTables

__all__ = ["Connection", "PgTables"]

Connection = psycopg.Connection[Any]

class PgTables(StoreTables):
    """What the table mixins need from :class:`edge.store.postgres.PostgresStore`, and
    PostgreSQL's spelling of what differs between databases."""

    @abstractmethod
    def _transaction(self, *, exclusive: bool = True) -> AbstractContextManager[Connection]: ...

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Connection]: ...

    @staticmethod
    @abstractmethod
    def _notify(conn: Connection, kind: str, ident: str = "") -> None: ...

    def _run(self, conn: Any, statement: str, params: Sequence[object] = ()) -> Any:
        # No statement of the shared tables holds a literal "?" or "%".
        return conn.execute(statement.replace("?", "%s"), params)

    @staticmethod
    def _time_in(moment: datetime) -> object:
        return moment

    @staticmethod
    def _time_out(value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value

    @staticmethod
    def _json_in(value: object) -> object:
        return Jsonb(value)

    @staticmethod
    def _json_out(value: Any) -> Any:
        return value

    @staticmethod
    def _flag_in(value: bool) -> object:
        return value

    @staticmethod
    def _byte_order(column: str) -> str:
        return f'{column} COLLATE "C"'
