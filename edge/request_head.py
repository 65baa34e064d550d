"""The request head as the edge reads it: where it ends, and its request line and headers.

Strict on purpose: ``find_head_end`` finds the blank line in either spelling, but
``parse_head`` splits lines on CRLF only and accepts no line that is not a token, a colon and
a value without control bytes but HTAB, so a bare CR or LF inside the head, like obs-fold, is
a 400 and nothing ambiguous reaches a handler. Header lines repeat from request to request,
so a line parsed once is remembered (bounded).
"""

from __future__ import annotations

import re

from edge.canonical import BadRequest
from tunnel.bounded_memo import BoundedMemo

__all__ = ["find_head_end", "parse_head"]

_REQUEST_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])"
)
# A token, a colon, and a value without control bytes but HTAB (leading blanks skipped here,
# trailing ones stripped by the caller: a lazy value followed by "[ \t]*" retried the tail at
# every byte, about 19 us for a 900-byte cookie against 1.3 us greedy).
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)"
)


def find_head_end(buffer: bytearray, start: int) -> int | None:
    """Index just past the blank line that ends the head (CRLF or bare-LF spelling)."""
    index = buffer.find(b"\n", start)
    while index != -1:
        if buffer[index + 1 : index + 2] == b"\n":
            return index + 2
        if buffer[index + 1 : index + 3] == b"\r\n":
            return index + 3
        index = buffer.find(b"\n", index + 1)
    return None


def parse_head(head: bytes) -> tuple[str, bytes, str, list[tuple[bytes, bytes]]]:
    """Method, raw target, version and headers of a complete head; raises BadRequest."""
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise BadRequest("malformed request: bad request line")
    headers: list[tuple[bytes, bytes]] = []
    seen = _PARSED_LINES
    for line in lines[1:]:
        if not line:
            break
        header = seen.get(line)
        if header is None:
            header = _parse_header_line(line)
        headers.append(header)
    method, target, major, minor = match.groups()
    return method.decode("ascii"), target, f"{major.decode()}.{minor.decode()}", headers


# Clients repeat their header lines (Host, Cookie, User-Agent...): a line of up to 2 KiB parsed
# once is looked up afterwards. Bounded; a full table starts over.
_PARSED_LINES_MAX = 1024
_PARSED_LINE_MAX = 2048
_PARSED_LINES: BoundedMemo[bytes, tuple[bytes, bytes]] = BoundedMemo(
    _PARSED_LINES_MAX, _PARSED_LINE_MAX
)


def _parse_header_line(line: bytes) -> tuple[bytes, bytes]:
    parsed = _HEADER_LINE.fullmatch(line)
    if parsed is None:
        raise BadRequest("malformed request: bad header line")
    name, value = parsed.groups()
    header = (name, value.rstrip(b" \t"))
    return _PARSED_LINES.remember(line, header, len(line))
