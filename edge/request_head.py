"""The request head as the edge reads it: where it ends, and its request line and headers.

Strict on purpose: ``find_head_end`` finds the blank line in either spelling, but
``parse_head`` splits lines on CRLF only and accepts no line that is not a token, a colon and
a value without control bytes but HTAB, so a bare CR or LF inside the head, like obs-fold, is
a 400 and nothing ambiguous reaches a handler. Request lines, header lines and whole header
lists repeat from request to request, so each is remembered once it passed (bounded); a head
that fails a check is checked again every time, so that each such request gets its error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge.canonical import BadRequest, HostPort, parse_host_header
from tunnel.bounded_memo import BoundedMemo

__all__ = ["HeaderFacts", "HeaderListRejected", "find_head_end", "header_facts", "parse_head"]

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
    """Index just past the blank line that ends the head (CRLF or bare-LF spelling).

    A line feed followed by CRLF or by another line feed ends it, whichever comes first; two
    searches in C instead of a step per line."""
    crlf = buffer.find(b"\n\r\n", start)
    if crlf == -1:
        bare = buffer.find(b"\n\n", start)
        return None if bare == -1 else bare + 2
    bare = buffer.find(b"\n\n", start, crlf + 1)
    return crlf + 3 if bare == -1 else bare + 2


def parse_head(head: bytes) -> tuple[str, bytes, str, list[tuple[bytes, bytes]]]:
    """Method, raw target, version and headers of a complete head; raises BadRequest."""
    lines = head.split(b"\r\n")
    request_line = _PARSED_REQUEST_LINES.get(lines[0]) or _parse_request_line(lines[0])
    headers: list[tuple[bytes, bytes]] = []
    seen = _PARSED_LINES
    for line in lines[1:]:
        if not line:
            break
        header = seen.get(line)
        if header is None:
            header = _parse_header_line(line)
        headers.append(header)
    method, target, version = request_line
    return method, target, version, headers


def _parse_request_line(line: bytes) -> tuple[str, bytes, str]:
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest("malformed request: bad request line")
    method, target, major, minor = match.groups()
    parsed = (method.decode("ascii"), target, f"{major.decode()}.{minor.decode()}")
    return _PARSED_REQUEST_LINES.remember(line, parsed, len(line))


# Clients repeat their header lines (Host, Cookie, User-Agent...): a line of up to 2 KiB parsed
# once is looked up afterwards. Bounded; a full table starts over.
_PARSED_LINES_MAX = 1024
_PARSED_LINE_MAX = 2048
_PARSED_LINES: BoundedMemo[bytes, tuple[bytes, bytes]] = BoundedMemo(
    _PARSED_LINES_MAX, _PARSED_LINE_MAX
)
_PARSED_REQUEST_LINES: BoundedMemo[bytes, tuple[str, bytes, str]] = BoundedMemo(
    _PARSED_LINES_MAX, _PARSED_LINE_MAX
)


def _parse_header_line(line: bytes) -> tuple[bytes, bytes]:
    parsed = _HEADER_LINE.fullmatch(line)
    if parsed is None:
        raise BadRequest("malformed request: bad header line")
    name, value = parsed.groups()
    header = (name, value.rstrip(b" \t"))
    return _PARSED_LINES.remember(line, header, len(line))


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What the edge reads from a request's header list before it can route the request."""

    host: HostPort
    host_value: bytes
    """The canonical ``Host`` as the origin receives it."""
    accept: bytes | None
    content_length: int | None
    chunked: bool
    expects_continue: bool
    upgrade_requested: bool


class HeaderListRejected(BadRequest):
    """The header list breaks a rule; ``accept`` (what an error page follows) and ``host``
    (``None`` until the Host header parsed) are what the edge learned before it failed."""

    def __init__(
        self, message: str, accept: bytes | None, host: str | None = None, *, status: int = 400
    ) -> None:
        super().__init__(message, status=status)
        self.accept = accept
        self.host = host


def header_facts(headers: list[tuple[bytes, bytes]], version: str) -> HeaderFacts:
    """The facts of ``headers`` (as ``parse_head`` returns them); raises HeaderListRejected.

    Only a list that passed is remembered, by its pairs and the version (``Expect`` counts
    for HTTP/1.1 only); limits that differ per listener (header count, body size) are the
    caller's."""
    key = (tuple(headers), version)
    facts = _FACTS.get(key)
    if facts is None:
        facts = _read_facts(headers, version)
        _FACTS.remember(key, facts, sum(len(name) + len(value) for name, value in headers))
    return facts


_FACTS: BoundedMemo[tuple[object, ...], HeaderFacts] = BoundedMemo(1024, 8192)


def _read_facts(headers: list[tuple[bytes, bytes]], version: str) -> HeaderFacts:
    hosts: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expects_continue = False
    upgrade_requested = False
    accept: bytes | None = None
    # One pass reads everything the checks below need (and the Accept an error page
    # follows), before any of them can fail.
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"host":
            hosts.append(value)
        elif lowered == b"accept":
            if accept is None:
                accept = value
        elif lowered == b"content-length":
            lengths.extend(part.strip() for part in value.split(b","))
        elif lowered == b"transfer-encoding":
            codings.extend(t.strip().lower() for t in value.split(b",") if t.strip())
        elif lowered == b"expect":
            expects_continue = version == "1.1" and value.lower() == b"100-continue"
        elif lowered == b"upgrade" and value.strip(b" \t,"):
            upgrade_requested = True
    if len(hosts) != 1:
        raise HeaderListRejected("a request needs exactly one Host header", accept)
    try:
        host = parse_host_header(hosts[0].decode("ascii"))
    except UnicodeDecodeError:
        raise HeaderListRejected("the Host header contains non-ASCII bytes", accept) from None
    except BadRequest as error:
        raise HeaderListRejected(str(error), accept, status=error.status) from None
    chunked = bool(codings)
    if chunked and codings != [b"chunked"]:
        raise HeaderListRejected("only Transfer-Encoding: chunked is supported", accept,
                                 host.host, status=501)
    if lengths and chunked:
        raise HeaderListRejected(
            "a request cannot carry both Content-Length and Transfer-Encoding", accept, host.host
        )
    content_length = None
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise HeaderListRejected(
                "the Content-Length is invalid or conflicting", accept, host.host
            )
        content_length = int(lengths[0])
    return HeaderFacts(
        host=host,
        host_value=str(host).encode("ascii"),
        accept=accept,
        content_length=content_length,
        chunked=chunked,
        expects_continue=expects_continue,
        upgrade_requested=upgrade_requested,
    )
