"""HEAD payloads a table decoded before (tunnel.protocol.header_table): answered from memory
with a fresh copy, only while every entry they refer to is held, never when they insert, and
never across connections."""

from __future__ import annotations

import json

import pytest

from tunnel.protocol import ProtocolError, header_table
from tunnel.protocol.header_table import IncomingHeaderTable, entry_size


def payload(head: dict[str, object]) -> bytes:
    return json.dumps(head, separators=(",", ":")).encode()


def test_a_payload_seen_before_decodes_to_an_equal_head_that_is_a_new_object() -> None:
    table = IncomingHeaderTable(4096)
    table.decode_head(payload({"status": 200, "headers": [["server", "nginx", 0]]}))
    repeated = payload({"status": 200, "headers": [0, ["date", "today"]]})
    first = table.decode_head(repeated)
    assert (table._serial, repeated) in header_table._decoded_heads
    second = table.decode_head(repeated)
    assert first == second == {"status": 200, "headers": [("server", "nginx"), ("date", "today")]}
    assert second is not first
    assert second["headers"] is not first["headers"]
    first["headers"].append(("x-changed", "by its user"))
    first["status"] = 500
    assert table.decode_head(repeated) == second  # what one user changes, no other sees


def test_a_payload_that_inserts_is_never_answered_from_memory() -> None:
    table = IncomingHeaderTable(4096)
    inserting = payload({"status": 200, "headers": [["server", "nginx", 0]]})
    assert table.decode_head(inserting)["headers"] == [("server", "nginx")]
    assert (table._serial, inserting) not in header_table._decoded_heads
    # The same bytes again are a second insertion numbered 0: the tables disagree.
    with pytest.raises(ProtocolError, match="inserts header entry 0, expected 1"):
        table.decode_head(inserting)


def test_a_remembered_payload_whose_entry_was_evicted_is_refused() -> None:
    table = IncomingHeaderTable(2 * entry_size("a", "1"))
    table.resolve([["a", "1", 0], ["a", "2", 1]])
    old = payload({"status": 204, "headers": [0]})
    assert table.decode_head(old)["headers"] == [("a", "1")]
    table.resolve([["a", "3", 2]])  # entry 0 goes
    with pytest.raises(ProtocolError, match="entry 0, not held"):
        table.decode_head(old)


def test_another_connection_never_gets_this_tables_heads() -> None:
    first, second = IncomingHeaderTable(4096), IncomingHeaderTable(4096)
    first.resolve([["server", "nginx", 0]])
    shared = payload({"status": 200, "headers": [0]})
    assert first.decode_head(shared)["headers"] == [("server", "nginx")]
    with pytest.raises(ProtocolError, match="entry 0, not held"):
        second.decode_head(shared)


def test_heads_without_headers_and_the_bounds() -> None:
    table = IncomingHeaderTable(4096)
    plain = payload({"status": 101})
    assert table.decode_head(plain) == {"status": 101}
    assert table.decode_head(plain) == {"status": 101}
    large = payload({"status": 200, "headers": [["x-pad", "p" * 5000]]})
    table.decode_head(large)
    assert (table._serial, large) not in header_table._decoded_heads
    for n in range(header_table.MAX_REMEMBERED_HEADS + 5):
        table.decode_head(payload({"status": 200, "headers": [["x-n", str(n)]]}))
    assert len(header_table._decoded_heads) <= header_table.MAX_REMEMBERED_HEADS
