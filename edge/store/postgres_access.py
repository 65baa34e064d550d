"""The PostgreSQL spelling of the Access configuration tables (:mod:`edge.store.access_tables`),
and what every table mixin of :class:`edge.store.postgres.PostgresStore` needs from it.

Statements take ``%s`` placeholders, timestamps are ``timestamptz``, JSON is ``jsonb``, flags
are booleans, names sort with ``COLLATE "C"`` (byte order, as on SQLite), and every write
notifies the other edges through :meth:`PgTables._notify`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ClassVar

import psycopg
from psycopg.types.json import Jsonb

from edge.store.access_tables import AccessConfigTables, StoreTables

__all__ = ["Connection", "PgAccessTables", "PgTables"]

Connection = psycopg.Connection[Any]

# Statements converted from ``?`` to ``%s`` placeholders, by their text (a fixed set).
_STATEMENTS: dict[str, str] = {}


class PgTables(StoreTables):
    """What the table mixins need from :class:`edge.store.postgres.PostgresStore`."""

    @abstractmethod
    def _transaction(self, *, exclusive: bool = True) -> AbstractContextManager[Connection]: ...

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Connection]: ...

    @staticmethod
    @abstractmethod
    def _notify(conn: Connection, kind: str, ident: str = "") -> None: ...


class PgAccessTables(PgTables, AccessConfigTables):
    """The Access configuration tables on PostgreSQL."""

    _NAME_ORDER: ClassVar[str] = 'name COLLATE "C"'

    def _run(self, conn: Any, statement: str, params: Sequence[object] = ()) -> Any:
        converted = _STATEMENTS.get(statement)
        if converted is None:
            # No statement of the tables holds a literal "?" or "%".
            converted = _STATEMENTS[statement] = statement.replace("?", "%s")
        return conn.execute(converted, params)

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
