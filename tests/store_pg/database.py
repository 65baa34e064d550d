"""A real PostgreSQL for the tests: each test gets its own throw-away database.

The server is named by ``TUNNELGATE_TEST_POSTGRES`` (a ``postgresql://`` URL of a role that
may create databases), by default the local one. When it cannot be reached the test fails and
says how to get one: a missing PostgreSQL must never look like a passing suite.
"""

from __future__ import annotations

import atexit
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

__all__ = ["SERVER_ENV", "server_url", "throwaway_database", "with_database"]

SERVER_ENV = "TUNNELGATE_TEST_POSTGRES"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    url = server_url()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"these tests need a real PostgreSQL and none answered at {url}: {exc}\n"
            "Install and start one (apt-get install postgresql && pg_ctlcluster 15 main start, "
            "with trust or a password for the role), or point "
            f"{SERVER_ENV} at a server where this role may CREATE DATABASE.",
            pytrace=False,
        )


_templates: dict[str, str] = {}


def _migrated_template() -> str:
    """A database with every migration applied, made once per test run: copying it is much
    quicker than migrating each new database."""
    if "migrated" not in _templates:
        from edge.store.postgres import PostgresStore

        name = f"tg_template_{secrets.token_hex(6)}"
        with _admin_connection() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        atexit.register(_drop_database, name)
        PostgresStore(with_database(server_url(), name)).close()
        _templates["migrated"] = name
    return _templates["migrated"]


def _drop_database(name: str) -> None:
    with _admin_connection() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(*, migrated: bool = True) -> Iterator[str]:
    """A new database for one test (with the schema applied unless ``migrated`` is False);
    yields its URL and drops it afterwards."""
    name = f"tg_{secrets.token_hex(6)}"
    template = f' TEMPLATE "{_migrated_template()}"' if migrated else ""
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield with_database(server_url(), name)
    finally:
        _drop_database(name)


def terminate_backends(url: str) -> int:
    """Cut every connection to the database of ``url`` (an outage, without stopping the shared
    server); returns how many were cut."""
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with _admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)
