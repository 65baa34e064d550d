"""Heads travel as JSON objects: escaped ASCII normally, UTF-8 when escapes would not fit.
A received head's header pairs are tuples (``tunnel.protocol.header_table``)."""

from __future__ import annotations

import json

import pytest
from tunnel_pairs import registered_pair

from tunnel.protocol import HeadReceived, Limits, LocalProtocolError, StreamOpened
from tunnel.protocol.frames import HEADER_SIZE


def test_heads_are_json_objects_that_round_trip() -> None:
    edge, connector = registered_pair()
    head = {"kind": "http", "headers": [["X-Name", "caf\u00e9 \u2603"]], "identity": None}
    stream_id = edge.open_stream(head)
    wire = edge.data_to_send()
    assert json.loads(wire[HEADER_SIZE:]) == head
    received = {**head, "headers": [("X-Name", "caf\u00e9 \u2603")]}
    assert connector.receive_data(wire) == [StreamOpened(stream_id, received, False)]
    connector.send_head(stream_id, {"status": 200, "headers": [["X-A", "\u00ff"]]})
    assert edge.receive_data(connector.data_to_send()) == [
        HeadReceived(stream_id, {"status": 200, "headers": [("X-A", "\u00ff")]}, False)
    ]


def test_a_head_whose_escapes_would_not_fit_goes_as_utf8() -> None:
    edge, connector = registered_pair(connector_limits=Limits(max_header_block=1024))
    head = {"kind": "http", "headers": [["X-Name", "\u00e9" * 400]]}  # 2,400 bytes escaped
    stream_id = edge.open_stream(head)
    wire = edge.data_to_send()
    assert len(wire) - HEADER_SIZE <= 1024
    received = {"kind": "http", "headers": [("X-Name", "\u00e9" * 400)]}
    assert connector.receive_data(wire) == [StreamOpened(stream_id, received, False)]
    with pytest.raises(LocalProtocolError):
        edge.open_stream({"kind": "http", "headers": [["X-Name", "\u00e9" * 600]]})
