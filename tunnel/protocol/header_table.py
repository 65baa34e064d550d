"""Indexed header pairs: a header a connection has carried before crosses it as a number.

Every proxied request carries the same long headers again and again: the edge's signed
assertion (about 900 bytes), the browser's user agent, the origin's ``Server`` and
``Content-Type``. Encoding, masking and parsing them as JSON text on every request was the
largest single cost of a head at both ends, so each connection keeps a table of pairs, like
HTTP/2's HPACK dynamic table but for whole pairs only:

* The receiver announces the table's size in HELLO (``header_table_size``, in bytes; 0, or a
  peer that announces nothing, means no indexing toward it). An entry costs
  ``len(name) + len(value) + ENTRY_OVERHEAD`` characters.
* In a head's ``headers`` list, ``[name, value]`` is a literal, ``[name, value, n]`` a literal
  the receiver then keeps as entry ``n``, and a bare ``n`` stands for entry ``n``. Entries are
  numbered 0, 1, 2 ... in the order they were inserted on the connection, so the number a
  literal carries must be the receiver's next one: anything else means the two tables differ.
* References resolve against the table as it was before their head; the head's insertions
  apply after it, in order. Room is made by evicting the oldest entries, on both sides by this
  same rule, so a sender always knows exactly what its peer holds.
* The sender indexes a pair the second time it sends it (so a value unique to one request never
  pushes out the ones that repeat), never one larger than a quarter of the table, and never a
  ``cookie``, ``set-cookie``, ``authorization`` or ``proxy-authorization`` header: HPACK's
  never-indexed fields, since whoever could watch frame sizes could test guesses of a short
  secret against them.

A reference to an entry the receiver does not hold, a number out of order or an entry that
cannot fit the announced size is a connection error (PROTOCOL_ERROR): the tables no longer
agree, and no later head could be trusted.

Once its pairs are indexed, the same request or response crosses as the same bytes, so the
receiver remembers what a HEAD payload that inserted nothing decoded to, per table (bounded,
process-wide), and answers the same payload with a copy while every entry it refers to is
still held; a payload that inserts is decoded every time, since the insertion must happen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from ..bounded_memo import BoundedMemo
from .errors import ErrorCode, LocalProtocolError, ProtocolError
from .events import Head
from .frames import decode_json_object, encode_json, shared_name

ENTRY_OVERHEAD = 32
"""Characters each entry counts beyond its name and value (HPACK's figure), which bounds the
number of entries a table of N bytes can hold to N / 32."""

NEVER_INDEXED = frozenset({"cookie", "set-cookie", "authorization", "proxy-authorization"})

Pair = tuple[str, str]


def entry_size(name: str, value: str) -> int:
    return len(name) + len(value) + ENTRY_OVERHEAD


class OutgoingHeaderTable:
    """What the peer holds of the pairs this side sent; turns header lists into wire entries.

    ``encode`` does not change the table: its insertions are applied by ``commit`` once the
    head is sure to be sent (a head refused as too large inserts nothing).
    """

    __slots__ = ("_capacity", "_first", "_index", "_max_entry", "_next", "_seen", "_seen_size",
                 "_sizes", "_used")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._max_entry = capacity // 4
        self._index: dict[Pair, int] = {}
        self._sizes: dict[int, tuple[Pair, int]] = {}
        self._first = 0  # the oldest live entry's number
        self._next = 0  # the number the next insertion gets
        self._used = 0
        # Pairs sent once, not (yet) indexed; bounded by the table's size, cleared when full.
        self._seen: set[Pair] = set()
        self._seen_size = 0

    @property
    def entries(self) -> int:
        return len(self._index)

    @property
    def used(self) -> int:
        """Bytes the peer's copy of the table holds (entry sizes, as announced in HELLO)."""
        return self._used

    def encode(self, headers: Sequence[Any]) -> tuple[list[object], list[Pair]]:
        """The wire form of ``headers`` (pairs of text), and the insertions it announces."""
        index = self._index
        wire: list[object] = []
        inserted: list[Pair] = []
        for header in headers:
            try:
                known = index.get(header)
            except TypeError:  # a list, or a pair holding something unhashable: a literal
                known = None
            if known is not None:
                wire.append(known)
                continue
            if len(header) != 2:
                raise LocalProtocolError(
                    ErrorCode.INTERNAL_ERROR, "a head's header must be a (name, value) pair"
                )
            name, value = header
            if self._capacity and type(name) is str and type(value) is str:
                pair = (name, value)
                if self._indexable(pair) and pair not in inserted:
                    wire.append([name, value, self._next + len(inserted)])
                    inserted.append(pair)
                    continue
            wire.append([name, value])
        return wire, inserted

    def encode_head(self, head: Head, limit: int) -> bytes:
        """The HEAD payload for ``head``: its headers indexed, JSON of at most ``limit`` bytes
        (escaped ASCII, or UTF-8 when escapes would not fit). The table changes only once the
        head is sure to fit; else LocalProtocolError(HEAD_TOO_LARGE)."""
        headers = head.get("headers")
        inserted = None
        if headers:
            wire, inserted = self.encode(headers)
            head = {**head, "headers": wire}
        payload = encode_json(head)
        if len(payload) > limit:
            payload = encode_json(head, compact=True)
        if len(payload) > limit:
            raise LocalProtocolError(
                ErrorCode.HEAD_TOO_LARGE, f"head of {len(payload)} bytes exceeds the peer's {limit}"
            )
        if inserted:
            self.commit(inserted)
        return payload

    def _indexable(self, pair: Pair) -> bool:
        """True the second time an indexable pair is sent; the first time it is noted."""
        name, value = pair
        size = entry_size(name, value)
        if size > self._max_entry or name.lower() in NEVER_INDEXED:
            return False
        if pair in self._seen:
            return True
        if self._seen_size + size > self._capacity:
            self._seen.clear()
            self._seen_size = 0
        self._seen.add(pair)
        self._seen_size += size
        return False

    def commit(self, inserted: list[Pair]) -> None:
        for pair in inserted:
            size = entry_size(*pair)
            while self._used + size > self._capacity:
                old, old_size = self._sizes.pop(self._first)
                del self._index[old]
                self._used -= old_size
                self._first += 1
            self._index[pair] = self._next
            self._sizes[self._next] = (pair, size)
            self._used += size
            self._next += 1
            if pair in self._seen:
                self._seen.discard(pair)
                self._seen_size -= size


_table_serials = itertools.count()

# Decoded HEAD payloads that inserted nothing, by (table serial, payload): the head (headers as a
# tuple) and the oldest entry it refers to. Bounded in entries and payload size.
MAX_REMEMBERED_HEADS = 1024
MAX_REMEMBERED_HEAD_BYTES = 4096
_decoded_heads: BoundedMemo[tuple[int, bytes], tuple[Head, int]] = BoundedMemo(
    MAX_REMEMBERED_HEADS, MAX_REMEMBERED_HEAD_BYTES
)
_NO_REFERENCE = 1 << 62


class IncomingHeaderTable:
    """The pairs the peer inserted; turns a received head's header entries back into pairs."""

    __slots__ = ("_capacity", "_entries", "_first", "_lowest", "_next", "_serial", "_used")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: dict[int, tuple[Pair, int]] = {}
        self._first = 0
        self._next = 0
        self._used = 0
        self._serial = next(_table_serials)
        self._lowest = _NO_REFERENCE  # the oldest entry the last resolved head referred to

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        return self._used

    def decode_head(self, payload: bytes) -> Head:
        """A received HEAD payload, its header entries resolved (``resolve``); a new dict (and
        header list) every time, whether decoded or remembered."""
        key = (self._serial, payload)
        known = _decoded_heads.get(key)
        if known is not None and known[1] >= self._first:
            head = dict(known[0])
            headers = head.get("headers")
            if headers is not None:
                head["headers"] = list(headers)
            return head
        head = decode_json_object(payload, "HEAD")
        headers = head.get("headers")
        lowest = _NO_REFERENCE
        if type(headers) is list:
            before = self._next
            head["headers"] = self.resolve(headers)
            if self._next != before:
                return head  # it inserted: never answered from memory
            lowest = self._lowest
        if len(payload) <= MAX_REMEMBERED_HEAD_BYTES:
            template = dict(head)
            if type(headers) is list:
                template["headers"] = tuple(head["headers"])
            _decoded_heads.remember(key, (template, lowest), len(payload))
        return head

    def resolve(self, raw: list[Any]) -> list[Any]:
        """The head's headers as (name, value) tuples; entries of another shape pass as they are
        (the head's user refuses them). Raises ProtocolError when the tables disagree."""
        entries = self._entries
        headers: list[Any] = []
        inserted: list[tuple[Pair, int]] = []
        lowest = _NO_REFERENCE
        for entry in raw:
            if type(entry) is int:
                found = entries.get(entry)
                if found is None:
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR, f"HEAD refers to header entry {entry}, not held"
                    )
                headers.append(found[0])
                if entry < lowest:
                    lowest = entry
            elif type(entry) is list and len(entry) == 2:
                name, value = entry
                if type(name) is str:
                    name = shared_name(name)
                headers.append((name, value))
            elif type(entry) is list and len(entry) == 3:
                name, value, number = entry
                if type(name) is not str or type(value) is not str or type(number) is not int:
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR, "HEAD inserts a header entry that is not text"
                    )
                if number != self._next + len(inserted):
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"HEAD inserts header entry {number}, expected {self._next + len(inserted)}",
                    )
                pair = (shared_name(name), value)
                size = entry_size(name, value)
                if size > self._capacity:
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"HEAD inserts a header entry of {size} into a table of {self._capacity}",
                    )
                headers.append(pair)
                inserted.append((pair, size))
            else:
                headers.append(entry)
        for pair, size in inserted:
            while self._used + size > self._capacity:
                self._used -= entries.pop(self._first)[1]
                self._first += 1
            entries[self._next] = (pair, size)
            self._used += size
            self._next += 1
        self._lowest = lowest
        return headers
