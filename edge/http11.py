"""One public client connection: HTTP/1.1 parsing, limits, timeouts and the edge's own answers.

The edge reads each request head itself before h11 sees it, because h11 is liberal where a
gateway must be strict: it unfolds obs-fold lines and accepts bare LF line endings, and both are
classic request-smuggling vectors when the origin parses differently. A fresh ``h11.Connection``
serves each request; bytes it did not consume (a pipelined next request) are carried over, so
every head goes through the same checks.

Errors are drawn in ``edge.http_messages``; every ``RequestRejected`` raised while reading a
request (or escaping a handler before it answered) becomes a standard page and a closed
connection.

Choices a reader might not expect:

* Host vs SNI mismatch answers 421 Misdirected Request, the status meant for "this connection
  cannot serve that host", which lets a browser retry on a fresh connection.
* Header names with ``_`` pass (they are valid tokens); ``edge.forwarding`` compares normalised
  names so underscore spellings cannot dodge removal.
* After any error page, after a response to an upgrade request that was not 101, and whenever
  the handler left part of the request body unread that had not already arrived, the
  connection is closed rather than reused.
* A handler that raises gets 500; one that returns without answering gets 502.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import h11
import trio

from edge.canonical import (
    BadRequest,
    RequestRejected,
    canonical_path,
    parse_host_header,
    split_absolute_target,
)
from edge.forwarding import (
    IPNetwork,
    clean_request_headers,
    normalise_header_name,
    strip_headers,
)
from edge.http_messages import (
    READ_SIZE,
    ClientDisconnected,
    ClientIO,
    Handler,
    HeadersTooLarge,
    HttpLimits,
    IncomingRequest,
    MisdirectedRequest,
    PayloadTooLarge,
    RequestBody,
    RequestTimeout,
    ResponseStateError,
    ResponseWriter,
    UpgradedStream,
    VersionNotSupported,
    error_page_headers,
    reason_phrase,
)
from edge.pages import render_error, wants_json

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "Handler",
    "HeadersTooLarge",
    "HttpLimits",
    "IncomingRequest",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "RequestBody",
    "RequestRejected",
    "RequestTimeout",
    "ResponseStateError",
    "ResponseWriter",
    "UpgradedStream",
    "VersionNotSupported",
    "normalise_header_name",
    "serve_http_connection",
    "strip_headers",
]

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024

_E = TypeVar("_E", bound=BaseException)
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_OBS_FOLD = re.compile(rb"\n[ \t]")


def _random_request_id() -> str:
    return secrets.token_hex(8)


@dataclass
class _ErrorContext:
    """What is known about a request when the edge must answer it itself."""

    request_id: str
    method: str | None = None
    host: str | None = None
    accept: bytes | None = None


async def serve_http_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    limits: HttpLimits,
    client_ip: str,
    scheme: str,
    trusted_proxies: Sequence[IPNetwork],
    server_name: str | None = None,
    encoded_slash_allowed: Callable[[str], bool] | None = None,
    new_request_id: Callable[[], str] = _random_request_id,
) -> None:
    """Serve requests on ``stream`` until the client leaves or an error ends it, then close it.

    ``server_name`` is the TLS SNI name; when set, every request's Host must match it (421).
    ``encoded_slash_allowed(host)`` says whether an application opted in to ``%2F``/``%5C`` in
    paths. ``new_request_id`` names each request on error pages and in the log.
    """
    connection = _ClientConnection(
        stream,
        handler,
        limits=limits,
        client_ip=client_ip,
        scheme=scheme,
        trusted_proxies=tuple(trusted_proxies),
        server_name=server_name,
        encoded_slash_allowed=encoded_slash_allowed,
        new_request_id=new_request_id,
    )
    try:
        await connection.run()
    except ClientDisconnected:
        log.debug("client went away client=%s", client_ip)
    except Exception:
        log.exception("http connection failed client=%s", client_ip)
    finally:
        await connection.close()


class _ClientConnection:
    """The request loop of one connection; see the module docstring for its rules."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        *,
        limits: HttpLimits,
        client_ip: str,
        scheme: str,
        trusted_proxies: tuple[IPNetwork, ...],
        server_name: str | None,
        encoded_slash_allowed: Callable[[str], bool] | None,
        new_request_id: Callable[[], str],
    ) -> None:
        self._io = ClientIO(stream, limits)
        self._handler = handler
        self._limits = limits
        self._peer_ip = client_ip
        self._scheme = scheme
        self._trusted_proxies = trusted_proxies
        self._sni_host = _sni_host(server_name)
        self._server_name = server_name
        self._encoded_slash_allowed = encoded_slash_allowed
        self._new_request_id = new_request_id
        self._linger = False
        self._upgraded = False

    async def run(self) -> None:
        first = True
        while True:
            try:
                if not await self._read_head(first):
                    return
            except RequestRejected as exc:
                await self._front_error(exc, _ErrorContext(self._new_request_id()))
                return
            first = False
            if not await self._serve_one():
                return

    async def close(self) -> None:
        stream = self._io.stream
        try:
            if self._linger and not self._upgraded and not self._io.eof:
                await self._linger_close(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _linger_close(self, stream: trio.abc.Stream) -> None:
        """Half-close, then drain briefly, so an error page is not lost to a TCP reset."""
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        await stream.send_eof()
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                drained += len(data)

    # --- the head --------------------------------------------------------------------------

    async def _read_head(self, first: bool) -> bool:
        """Wait for a complete, well-formed head in the buffer; ``False`` when the client left."""
        io, limits = self._io, self._limits
        now = trio.current_time()
        idle_deadline = now + (limits.header_timeout if first else limits.idle_timeout)
        head_deadline: float | None = now + limits.header_timeout if first else None
        search_from = 0
        while True:
            while io.buffer.startswith(b"\r\n"):
                del io.buffer[:2]
                search_from = 0
            if io.buffer:
                if head_deadline is None:
                    head_deadline = trio.current_time() + limits.header_timeout
                end = _find_head_end(io.buffer, search_from)
                if end is not None:
                    if end > limits.max_header_bytes:
                        raise HeadersTooLarge("the request head is too large")
                    _check_head(bytes(io.buffer[:end]), limits)
                    return True
                if len(io.buffer) > limits.max_header_bytes:
                    raise HeadersTooLarge("the request head is too large")
                search_from = max(0, len(io.buffer) - 3)
            if io.eof:
                return False
            deadline = head_deadline if io.buffer and head_deadline is not None else idle_deadline
            with trio.move_on_at(deadline) as scope:
                data = await io.receive()
            if scope.cancelled_caught:
                if io.buffer:
                    raise RequestTimeout("the request head was not completed in time")
                return False
            io.buffer += data

    # --- one request -----------------------------------------------------------------------

    async def _serve_one(self) -> bool:
        """Parse, hand to the handler, check the outcome; ``True`` to keep the connection."""
        io = self._io
        h11_conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes
        )
        h11_conn.receive_data(bytes(io.buffer))
        io.buffer.clear()
        if io.eof:
            h11_conn.receive_data(b"")
        context = _ErrorContext(self._new_request_id())
        try:
            event = h11_conn.next_event()
            if not isinstance(event, h11.Request):
                raise BadRequest("incomplete request head")
            context.method = event.method.decode("ascii", "replace")
            context.accept = _first_header(event.headers.raw_items(), b"accept")
            request, upgrade_requested = self._build_request(event, h11_conn, context)
        except h11.RemoteProtocolError as exc:
            hint = exc.error_status_hint
            status = hint if 400 <= hint <= 599 else 400
            await self._front_error(BadRequest(f"malformed request: {exc}", status=status), context)
            return False
        except RequestRejected as exc:
            await self._front_error(exc, context)
            return False
        return await self._run_handler(h11_conn, request, upgrade_requested, context)

    def _build_request(
        self, event: h11.Request, h11_conn: h11.Connection, context: _ErrorContext
    ) -> tuple[IncomingRequest, bool]:
        limits = self._limits
        raw_headers = list(event.headers.raw_items())
        if len(raw_headers) > limits.max_headers:
            raise HeadersTooLarge("too many request headers")
        if event.http_version not in (b"1.0", b"1.1"):
            raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served here")
        method = event.method.decode("ascii")
        if method == "CONNECT":
            raise BadRequest("CONNECT is not supported")
        hosts = [v for n, v in raw_headers if n.lower() == b"host"]
        if len(hosts) != 1:
            raise BadRequest("a request needs exactly one Host header")
        host = parse_host_header(_ascii(hosts[0], "Host header"))
        context.host = host.host
        target = _ascii(event.target, "request target")
        absolute = split_absolute_target(target)
        if absolute is not None:
            _scheme, authority, target = absolute
            named = parse_host_header(authority)
            if named.host != host.host or (
                named.port is not None and host.port is not None and named.port != host.port
            ):
                raise BadRequest("the absolute-form target names another host than Host")
        if self._server_name is not None and self._sni_host != host.host:
            raise MisdirectedRequest("the Host header does not match the TLS server name")
        allow_encoded_slash = (
            self._encoded_slash_allowed is not None and self._encoded_slash_allowed(host.host)
        )
        canonical = canonical_path(target, allow_encoded_slash=allow_encoded_slash)

        lengths = [v for n, v in raw_headers if n.lower() == b"content-length"]
        chunked = any(n.lower() == b"transfer-encoding" for n, _ in raw_headers)
        if lengths and chunked:
            raise BadRequest("a request cannot carry both Content-Length and Transfer-Encoding")
        content_length = int(lengths[0].split(b",")[0]) if lengths else None
        if (
            limits.max_body_bytes is not None
            and content_length is not None
            and content_length > limits.max_body_bytes
        ):
            raise PayloadTooLarge("the request body is larger than allowed")

        cleaned = clean_request_headers(
            raw_headers,
            method=method,
            host_value=str(host).encode("ascii"),
            peer_ip=self._peer_ip,
            scheme=self._scheme,
            trusted_proxies=self._trusted_proxies,
        )
        upgrade_requested = any(
            n.lower() == b"upgrade" and v.strip(b" \t,") for n, v in raw_headers
        )
        request = IncomingRequest(
            method=method,
            host=host.host,
            port=host.port,
            path=canonical.path,
            query=canonical.query,
            headers=cleaned.headers,
            client_ip=cleaned.client_ip,
            peer_ip=self._peer_ip,
            scheme=cleaned.scheme,
            http_version=event.http_version.decode("ascii"),
            is_websocket_upgrade=cleaned.is_websocket_upgrade,
            expects_continue=h11_conn.they_are_waiting_for_100_continue,
            content_length=content_length,
            request_id=context.request_id,
        )
        return request, upgrade_requested

    async def _run_handler(
        self,
        h11_conn: h11.Connection,
        request: IncomingRequest,
        upgrade_requested: bool,
        context: _ErrorContext,
    ) -> bool:
        body = RequestBody(self._io, h11_conn)
        writer = ResponseWriter(
            self._io, h11_conn, request, body, upgrade_requested=upgrade_requested
        )
        try:
            await self._handler(request, body, writer)
        except Exception as exc:
            # Errors from the body reader may arrive wrapped in a handler's nursery group.
            rejected = _first_leaf(exc, RequestRejected)
            if rejected is not None:
                if not writer.started:
                    await self._front_error(rejected, context)
            elif _first_leaf(exc, ClientDisconnected) is not None:
                log.debug("client went away request=%s", request.request_id)
            else:
                log.exception("handler failed request=%s host=%s", request.request_id, request.host)
                if not writer.started:
                    failure = RequestRejected("", status=500)
                    await self._front_error(failure, context, "internal_error")
            return False
        finally:
            self._upgraded = writer.upgraded
        if writer.upgraded:
            return False
        if not writer.started:
            log.error(
                "handler returned no response request=%s host=%s", request.request_id, request.host
            )
            detail = "The gateway produced no response for this request."
            await self._front_error(
                RequestRejected(detail, status=502), context, "origin_unreachable"
            )
            return False
        if not writer.finished or writer.must_close or upgrade_requested:
            self._linger = True
            return False
        body.drain_buffered()
        if h11_conn.our_state is h11.DONE and h11_conn.their_state is h11.DONE:
            leftover, closed = h11_conn.trailing_data
            self._io.buffer += leftover
            self._io.eof = self._io.eof or closed
            return True
        self._linger = True
        return False

    async def _front_error(
        self, exc: RequestRejected, context: _ErrorContext, code: str | None = None
    ) -> None:
        """Answer with a standard page written directly (h11 may be in an error state)."""
        log.info(
            "request refused status=%d request=%s client=%s reason=%s",
            exc.status,
            context.request_id,
            self._peer_ip,
            exc.detail or exc.code,
        )
        page = render_error(
            exc.status,
            code=code or exc.code,
            detail=exc.detail or None,
            host=context.host,
            request_id=context.request_id,
            as_json=wants_json(context.accept),
        )
        head = [f"HTTP/1.1 {exc.status} ".encode("ascii") + reason_phrase(exc.status)]
        head += [
            n + b": " + v
            for n, v in error_page_headers(page.content_type, len(page.body), context.request_id)
        ]
        head.append(b"Connection: close")
        data = b"\r\n".join(head) + b"\r\n\r\n"
        if context.method != "HEAD":
            data += page.body
        self._linger = True
        try:
            await self._io.send(data)
        except ClientDisconnected:
            pass


def _first_leaf(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` itself or the first exception of type ``kind`` inside (nested) groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_leaf(inner, kind)
            if found is not None:
                return found
    return None


def _find_head_end(buffer: bytearray, start: int) -> int | None:
    """Index just past the blank line that ends the head (CRLF or bare-LF spelling)."""
    index = buffer.find(b"\n", start)
    while index != -1:
        if buffer[index + 1 : index + 2] == b"\n":
            return index + 2
        if buffer[index + 1 : index + 3] == b"\r\n":
            return index + 3
        index = buffer.find(b"\n", index + 1)
    return None


def _check_head(head: bytes, limits: HttpLimits) -> None:
    if _BARE_CR.search(head) or _BARE_LF.search(head):
        raise BadRequest("the request head contains a bare CR or LF")
    if _OBS_FOLD.search(head):
        raise BadRequest("folded header lines (obs-fold) are not accepted")
    if head.count(b"\n") - 2 > limits.max_headers:
        raise HeadersTooLarge("too many request headers")


def _ascii(value: bytes, what: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(f"the {what} contains non-ASCII bytes") from None


def _first_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for header, value in headers:
        if header.lower() == name:
            return value
    return None


def _sni_host(server_name: str | None) -> str | None:
    if server_name is None:
        return None
    try:
        return parse_host_header(server_name).host
    except BadRequest:
        return None
