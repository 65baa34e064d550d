"""The SQLite spelling of the Access configuration tables (:mod:`edge.store.access_tables`),
and what every table mixin of :class:`edge.store.sqlite.SqliteStore` needs from it.

Timestamps are ISO text in UTC (``sql_timestamp``), JSON is text with sorted keys, flags are 0
and 1, names sort in SQLite's default byte order, and nothing is notified: one SQLite file
serves one edge.
"""

from __future__ import annotations

import json
import sqlite3
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar

from edge.store.access_tables import AccessConfigTables, StoreTables, app_not_found

__all__ = ["AccessTables", "SqliteTables", "app_not_found", "sql_timestamp"]


def sql_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the store clock must return timezone-aware datetimes")
    return moment.astimezone(UTC).isoformat()


class SqliteTables(StoreTables):
    """What the table mixins need from :class:`edge.store.sqlite.SqliteStore`."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @abstractmethod
    def _reading(self) -> AbstractContextManager[sqlite3.Connection]: ...


class AccessTables(SqliteTables, AccessConfigTables):
    """The Access configuration tables on SQLite."""

    _NAME_ORDER: ClassVar[str] = "name"

    def _run(self, conn: Any, statement: str, params: Sequence[object] = ()) -> Any:
        return conn.execute(statement, params)

    @staticmethod
    def _notify(conn: Any, kind: str, ident: str = "") -> None:
        return None  # one SQLite file serves one edge: nobody else to tell

    @staticmethod
    def _time_in(moment: datetime) -> object:
        return sql_timestamp(moment)

    @staticmethod
    def _time_out(value: Any) -> datetime:
        return datetime.fromisoformat(value)

    @staticmethod
    def _json_in(value: object) -> object:
        return json.dumps(value, sort_keys=True)

    @staticmethod
    def _json_out(value: Any) -> Any:
        return json.loads(value)

    @staticmethod
    def _flag_in(value: bool) -> object:
        return int(value)
