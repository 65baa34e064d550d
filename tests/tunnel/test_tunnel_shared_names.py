"""Decoded heads share their keys and header names, through a table that cannot grow unbounded."""

from __future__ import annotations

import pytest

from tunnel.protocol import frames
from tunnel.protocol.frames import decode_json_object, encode_json, shared_name
from tunnel.protocol.header_table import IncomingHeaderTable


def test_heads_decoded_apart_share_their_keys_and_header_names() -> None:
    payload = encode_json(
        {"status": 101, "headers": [["Upgrade", "websocket"], ["Sec-WebSocket-Accept", "s3pP"]]}
    )
    first = decode_json_object(payload, "HEAD")
    second = decode_json_object(bytes(payload), "HEAD")
    assert all(a is b for a, b in zip(first, second, strict=True))
    table = IncomingHeaderTable(0)
    first_headers = table.resolve(first["headers"])
    second_headers = table.resolve(second["headers"])
    assert first_headers == second_headers == [
        ("Upgrade", "websocket"), ("Sec-WebSocket-Accept", "s3pP")
    ]
    assert all(a[0] is b[0] for a, b in zip(first_headers, second_headers, strict=True))


def test_odd_header_entries_are_left_as_they_are() -> None:
    head = decode_json_object(b'{"headers": [[], [1, "x"], "text", ["Name", "v"]]}', "HEAD")
    assert IncomingHeaderTable(0).resolve(head["headers"]) == [[], (1, "x"), "text", ("Name", "v")]


def test_the_table_stops_taking_names_once_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "_shared_names", {})
    monkeypatch.setattr(frames, "MAX_SHARED_NAMES", 2)
    one = shared_name("x-one")
    shared_name("x-two")
    third = "".join(["x-", "three"])
    assert shared_name(third) is third
    later_third = "".join(["x-", "three"])
    assert shared_name(later_third) is later_third  # not taken: the table is full
    assert shared_name("".join(["x-", "one"])) is one


def test_long_names_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "_shared_names", {})
    name = "x" * (frames.MAX_SHARED_NAME_LENGTH + 1)
    copy = "".join(["x"] * (frames.MAX_SHARED_NAME_LENGTH + 1))
    assert shared_name(name) is name
    assert shared_name(copy) is copy
