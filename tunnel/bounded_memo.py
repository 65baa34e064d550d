"""Remembered results of per-request work that repeats (parsed header lines, checked headers,
converted header pairs, split cookies), bounded so that a peer sending ever-new values cannot
grow memory: at most ``max_entries`` entries, each for an input of at most ``max_size``.

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
    __slots__ = ("_table", "get", "max_entries", "max_size")

    def __init__(self, max_entries: int, max_size: int) -> None:
        self._table: dict[K, V] = {}
        self.get = self._table.get
        self.max_entries = max_entries
        self.max_size = max_size

    def remember(self, key: K, value: V, size: int) -> V:
        """Keep ``value`` under ``key`` when its input's ``size`` is within ``max_size`` and
        the key is hashable (a bytearray is not); a full table is emptied first. Returns
        ``value`` either way."""
        if size > self.max_size:
            return value
        table = self._table
        if len(table) >= self.max_entries:
            table.clear()
        try:
            table[key] = value
        except TypeError:
            pass
        return value

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table
