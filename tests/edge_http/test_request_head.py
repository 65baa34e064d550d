"""The request head as the edge reads it: where a head ends, and the request lines and header
lists it remembers once they passed (edge.request_head)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import request_head
from edge.canonical import BadRequest
from edge.request_head import HeaderListRejected, find_head_end, header_facts, parse_head


def _end_by_steps(buffer: bytes, start: int) -> int | None:
    """The head's end found one line feed at a time: what find_head_end must agree with."""
    index = buffer.find(b"\n", start)
    while index != -1:
        if buffer[index + 1 : index + 2] == b"\n":
            return index + 2
        if buffer[index + 1 : index + 3] == b"\r\n":
            return index + 3
        index = buffer.find(b"\n", index + 1)
    return None


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b": ", b"\n\n", b"\r\n\r\n"]),
             max_size=24),
    st.integers(min_value=0, max_value=40),
)
def test_the_end_of_a_head_is_the_first_blank_line_in_either_spelling(
    parts: list[bytes], start: int
) -> None:
    buffer = b"".join(parts)
    assert find_head_end(bytearray(buffer), start) == _end_by_steps(buffer, start)


@pytest.mark.parametrize(
    ("buffer", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nnext", 27),
        (b"GET / HTTP/1.1\nHost: a\n\nnext", 24),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 26),  # a bare LF line, then the CRLF blank line
        (b"GET / HTTP/1.1\r\nHost: a\n\n\r\n\r\n", 25),  # the bare-LF blank line comes first
        (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
    ],
)
def test_the_end_of_a_head_in_each_spelling(buffer: bytes, end: int | None) -> None:
    assert find_head_end(bytearray(buffer), 0) == end


def test_a_request_line_is_remembered_once_it_parsed_and_a_bad_one_never() -> None:
    head = b"OPTIONS /x?y=1 HTTP/1.0\r\nHost: app\r\n\r\n"
    first = parse_head(head)
    assert first[:3] == ("OPTIONS", b"/x?y=1", "1.0")
    assert b"OPTIONS /x?y=1 HTTP/1.0" in request_head._PARSED_REQUEST_LINES
    assert parse_head(head) == first
    for _ in range(2):  # refused every time
        with pytest.raises(BadRequest, match="bad request line"):
            parse_head(b"GET  / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert b"GET  / HTTP/1.1" not in request_head._PARSED_REQUEST_LINES
    for n in range(request_head._PARSED_LINES_MAX + 10):
        parse_head(b"GET /%d HTTP/1.1\r\n\r\n" % n)
    assert len(request_head._PARSED_REQUEST_LINES) <= request_head._PARSED_LINES_MAX


def test_the_facts_of_a_header_list_and_its_second_lookup() -> None:
    headers = [(b"Host", b"App.Example.com:8443"), (b"Accept", b"text/html"),
               (b"Content-Length", b"5, 5"), (b"Expect", b"100-continue"), (b"Upgrade", b"ws")]
    facts = header_facts(headers, "1.1")
    assert (facts.host.host, facts.host.port) == ("app.example.com", 8443)
    assert facts.host_value == b"app.example.com:8443"
    assert facts.accept == b"text/html"
    assert (facts.content_length, facts.chunked) == (5, False)
    assert facts.expects_continue
    assert facts.upgrade_requested
    assert header_facts(list(headers), "1.1") is facts  # looked up, not read again
    # Expect means nothing to HTTP/1.0: the version is part of what is remembered.
    assert not header_facts(headers, "1.0").expects_continue
    chunked = header_facts([(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")], "1.1")
    assert (chunked.chunked, chunked.content_length) == (True, None)


@pytest.mark.parametrize(
    ("headers", "message", "status", "host"),
    [
        ([(b"Accept", b"application/json")], "exactly one Host", 400, None),
        ([(b"Host", b"a"), (b"Host", b"b")], "exactly one Host", 400, None),
        ([(b"Host", b"caf\xc3\xa9")], "non-ASCII", 400, None),
        ([(b"Host", b"a b")], "whitespace", 400, None),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")], "only Transfer", 501, "a"),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"1")],
         "both", 400, "a"),
        ([(b"Host", b"a"), (b"Content-Length", b"1, 2")], "Content-Length", 400, "a"),
        ([(b"Host", b"a"), (b"Content-Length", b"-1")], "Content-Length", 400, "a"),
        ([(b"Host", b"a"), (b"Content-Length", b"1" * 19)], "Content-Length", 400, "a"),
    ],
)
def test_a_header_list_that_breaks_a_rule_is_refused_every_time(
    headers: list[tuple[bytes, bytes]], message: str, status: int, host: str | None
) -> None:
    headers = [*headers, (b"Accept", b"application/json")]
    for _ in range(2):
        with pytest.raises(HeaderListRejected, match=message) as caught:
            header_facts(headers, "1.1")
        assert caught.value.status == status
        assert caught.value.host == host
        accept = next(value for name, value in headers if name == b"Accept")
        assert caught.value.accept == accept  # the error page can still follow it
    assert (tuple(headers), "1.1") not in request_head._FACTS


def test_the_header_list_table_is_bounded() -> None:
    big = [(b"Host", b"a"), (b"X-Pad", b"x" * 9000)]
    header_facts(big, "1.1")
    assert (tuple(big), "1.1") not in request_head._FACTS
    for n in range(1100):
        header_facts([(b"Host", b"a"), (b"X-N", b"%d" % n)], "1.1")
    assert len(request_head._FACTS) <= 1024
