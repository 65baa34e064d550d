"""The conversions of header pairs between the client's bytes and the tunnel head's text,
remembered for pairs seen before: the same result every time, and bounded tables."""

from __future__ import annotations

from edge import proxy


def test_response_pairs_convert_alike_when_seen_again_and_hop_by_hop_ones_go() -> None:
    head = [["Server", "nginx"], ["Connection", "keep-alive"], ["X-Caf\u00e9", "cr\u00e8me"]]
    for _ in range(2):  # the second time from the table
        assert list(proxy._encoded_headers(head, skip=proxy.HOP_BY_HOP_RESPONSE)) == [
            (b"Server", b"nginx"),
            (b"X-Caf\xe9", b"cr\xe8me"),
        ]
    # The skip list applies to remembered pairs too (a 101 keeps Connection).
    assert (b"Connection", b"keep-alive") in proxy._encoded_headers(head)


def test_a_pair_that_is_not_text_is_converted_but_not_remembered() -> None:
    assert list(proxy._encoded_headers([["X-Count", 3], [["odd"], "v"]])) == [
        (b"X-Count", b"3"),
        (b"['odd']", b"v"),
    ]
    assert ("X-Count", 3) not in proxy._RESPONSE_PAIRS


def test_a_list_of_pairs_seen_again_is_looked_up_whole() -> None:
    head = [("Server", "nginx"), ("Content-Length", "5"), ("Connection", "keep-alive")]
    first = proxy._encoded_headers(head, skip=proxy.HOP_BY_HOP_RESPONSE)
    assert first == ((b"Server", b"nginx"), (b"Content-Length", b"5"))
    assert proxy._encoded_headers(list(head), skip=proxy.HOP_BY_HOP_RESPONSE) is first
    # Another skip list is another entry: a 101 keeps Connection.
    assert (b"Connection", b"keep-alive") in proxy._encoded_headers(head)


def test_request_pairs_become_text_once_and_the_tables_stay_bounded() -> None:
    first = proxy._head_pair(b"Host", b"app.example")
    assert first == ("Host", "app.example")
    assert proxy._HEAD_PAIRS.get((b"Host", b"app.example")) is first
    long_value = b"v" * proxy._PAIR_MEMO_BYTES
    proxy._head_pair(b"X-Long", long_value)
    assert (b"X-Long", long_value) not in proxy._HEAD_PAIRS
    for n in range(proxy._PAIR_MEMO_ENTRIES + 10):
        proxy._head_pair(b"X-N", b"%d" % n)
        proxy._encoded_headers([["X-N", str(n)]])
    assert len(proxy._HEAD_PAIRS) <= proxy._PAIR_MEMO_ENTRIES
    assert len(proxy._RESPONSE_PAIRS) <= proxy._PAIR_MEMO_ENTRIES
