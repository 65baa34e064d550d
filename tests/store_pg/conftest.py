"""Fixtures for the PostgreSQL-only store tests: a throw-away database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .database import throwaway_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A migrated, empty database."""
    with throwaway_database() as url:
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A database without any schema."""
    with throwaway_database(migrated=False) as url:
        yield url
