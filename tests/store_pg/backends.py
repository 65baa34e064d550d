"""The store fixture both backends share, so one test-suite checks SQLite and PostgreSQL.

A test module opts in by importing the fixture (``from store_pg.backends import backend_store``),
which is named ``store`` and so overrides its conftest's SQLite-only ``store``: every test that takes ``store`` then runs once
per backend (ids ``sqlite`` and ``postgres``). :func:`persisted_bytes` replaces reading the
SQLite files where a test checks what reached the disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from edge.store import Store
from edge.store.postgres import PostgresStore
from edge.store.sqlite import SqliteStore

from .database import throwaway_database

__all__ = ["BACKENDS", "SteppingClock", "backend_store", "persisted_bytes"]

BACKENDS = ("sqlite", "postgres")
START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class SteppingClock:
    """Each call returns a time one second after the previous one."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(name="store", params=BACKENDS)
def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        with SqliteStore(tmp_path / "state" / "tunnelgate.db", clock=SteppingClock()) as opened:
            yield opened
        return
    with throwaway_database() as url, PostgresStore(url, clock=SteppingClock()) as pg_store:
        yield pg_store


def persisted_bytes(store: Store) -> bytes:
    """Everything the store has written down: the SQLite files, or every PostgreSQL row."""
    if isinstance(store, SqliteStore):
        return b"".join(path.read_bytes() for path in store.path.parent.iterdir())
    assert isinstance(store, PostgresStore)
    chunks: list[bytes] = []
    with psycopg.connect(store.url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            for (text,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                chunks.append(str(text).encode())
    return b"\n".join(chunks)
