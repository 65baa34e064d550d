"""Remembered results of per-request work that repeats (parsed header lines, checked headers,
split cookies), bounded so that a peer sending ever-new values cannot grow memory.

A full table starts over rather than evicting one entry at a time: the entries that matter
come back at once, and there is no bookkeeping per lookup. ``get`` is the table's own
``dict.get``, so a hit costs one C call.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    __slots__ = ("_table", "get", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self._table: dict[K, V] = {}
        self.get = self._table.get
        self.max_entries = max_entries

    def remember(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (emptying a full table first); returns ``value``."""
        table = self._table
        if len(table) >= self.max_entries:
            table.clear()
        table[key] = value
        return value

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table
