"""The conversions of header pairs between the tunnel head's text and the origin's bytes,
remembered for pairs seen before: the same result every time, and bounded tables."""

from __future__ import annotations

import pytest

from connector import origin
from connector.ingress import OriginRequest
from connector.origin_pool import ResponseHead


def test_request_pairs_convert_alike_when_seen_again() -> None:
    head = {
        "method": "GET",
        "target": "/",
        "host": "app.example",
        "headers": [["Host", "app.example"], ["X-Caf\u00e9", "v"], ["Connection", "close"]],
        "client": "192.0.2.1",
        "scheme": "https",
    }
    first = origin._request_parts(head, OriginRequest())
    second = origin._request_parts(head, OriginRequest())  # from the table this time
    assert first == second
    assert first[2] == [
        (b"host", b"app.example"),
        (b"X-Caf\xe9", b"v"),
        (b"x-forwarded-for", b"192.0.2.1"),
        (b"x-forwarded-proto", b"https"),
    ]


@pytest.mark.parametrize("bad", [[["X-A", 3]], [[["X-A"], "v"]], [["X-A"]]])
def test_a_header_that_is_not_a_text_pair_aborts_the_stream(bad: list[object]) -> None:
    head = {"method": "GET", "host": "app.example", "headers": bad}
    with pytest.raises(origin.StreamAbort, match="malformed request head"):
        origin._request_parts(head, OriginRequest())


def test_response_pairs_convert_alike_and_hop_by_hop_ones_go_unless_all_are_kept() -> None:
    response = ResponseHead(200, [(b"Server", b"nginx"), (b"Connection", b"keep-alive")], 1)
    for _ in range(2):  # the second time from the table
        assert origin._head_headers(response) == [("Server", "nginx")]
    assert origin._head_headers(response, keep_all=True) == [
        ("Server", "nginx"),
        ("Connection", "keep-alive"),
    ]


def test_the_pair_tables_stay_bounded() -> None:
    for n in range(origin._PAIR_MEMO_ENTRIES + 10):
        origin._request_pair("X-N", str(n))
        origin._response_pair(b"X-N", b"%d" % n)
    assert len(origin._REQUEST_PAIRS) <= origin._PAIR_MEMO_ENTRIES
    assert len(origin._RESPONSE_PAIRS) <= origin._PAIR_MEMO_ENTRIES
    long_value = "v" * origin._PAIR_MEMO_BYTES
    origin._request_pair("X-Long", long_value)
    assert ("X-Long", long_value) not in origin._REQUEST_PAIRS
