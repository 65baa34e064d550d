"""The SQLite spelling of the store's tables (:class:`edge.store.store_tables.StoreTables`),
for every table mixin of :class:`edge.store.sqlite.SqliteStore`.

Timestamps are ISO text in UTC (``sql_timestamp``), JSON is text with sorted keys, flags are 0
and 1, text sorts in SQLite's default byte order, and nothing is notified: one SQLite file
serves one edge.
"""

from __future__ import annotations

import json
import sqlite3
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from edge.store.store_tables import StoreTables

__all__ = ["SqliteTables", "sql_timestamp"]


def sql_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the store clock must return timezone-aware datetimes")
    return moment.astimezone(UTC).isoformat()


class SqliteTables(StoreTables):
    """What the table mixins need from :class:`edge.store.sqlite.SqliteStore`, and SQLite's
    spelling of what differs between databases."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @abstractmethod
    def _reading(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @staticmethod
    def _notify(conn: Any, kind: str, ident: str = "") -> None:
        return None  # one SQLite file serves one edge: nobody else to tell

    def _run(self, conn: Any, statement: str, params: Sequence[object] = ()) -> Any:
        return conn.execute(statement, params)

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

    @staticmethod
    def _byte_order(column: str) -> str:
        return column  # SQLite's default collation compares bytes
