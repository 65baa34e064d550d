"""One public client connection: HTTP/1.1 parsing, limits, timeouts and the edge's own answers.

The edge parses requests itself, strictly, because this is where a gateway must be strict and
the request path must be cheap: obs-fold lines, bare CR or LF, a space before the colon, a
non-token name or a control byte in a value are refused (each is a classic request-smuggling
vector when the origin parses differently); ``Content-Length`` values must agree, and
``Transfer-Encoding`` must be exactly ``chunked`` (501 otherwise) and never come with a length.
Bytes after a request (a pipelined next one) stay in the buffer, so every head goes through the
same checks.

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
* After a ``101`` a handler may return a relay instead of relaying itself: it runs here once
  the handler's frames are gone (``edge.http_messages.Handler`` says why).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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
    Relay,
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
from edge.request_head import HeaderListRejected, find_head_end, header_facts, parse_head
from tunnel.deadlines import deadline_keeper
from tunnel.fd_io import close_unwaited

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "Handler",
    "HeadersTooLarge",
    "HttpLimits",
    "IncomingRequest",
    "MisdirectedRequest",
    "PayloadTooLarge",
    "Relay",
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


class _RequestIds:
    """Request ids: a random per-process prefix and a counter (unique, no syscall per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(secrets.randbelow(1 << 24))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"


_random_request_id = _RequestIds()


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
        self._relay: tuple[Relay, str] | None = None
        self._waiting: trio.CancelScope | None = None  # entered by run() for a TLS stream
        self._timed_out = False
        self._deadlines = deadline_keeper()

    def deadline_passed(self) -> None:
        """The header or idle timeout passed while the connection waited (tunnel.deadlines)."""
        if self._waiting is not None:
            self._waiting.cancel()
            return
        fd = self._io.fd
        if fd is not None:
            self._timed_out = True  # seen before the next read, if the task was not in one
            trio.lowlevel.notify_closing(fd)  # wakes a read waiting on the descriptor

    async def run(self) -> None:
        # The run's deadline keeper times the waits for a head. On a plain TCP connection a
        # timeout that passes wakes the read through the descriptor (``deadline_passed``); a
        # TLS stream's reads go through trio's stream, so the timeout cancels one cancel scope
        # kept for the connection's life. (A scope entered for every wait, or its deadline
        # moved twice per request, cost more than the rest of reading a head; the scope alone
        # was about a tenth of the edge's work per ``Connection: close`` request.)
        if self._io.fd is not None:
            try:
                await self._serve_requests()
            except ClientDisconnected:
                if not self._timed_out:
                    raise
            timed_out = self._timed_out
        else:
            with trio.CancelScope() as waiting:
                self._waiting = waiting
                await self._serve_requests()
            timed_out = waiting.cancelled_caught
        if timed_out:
            # A deadline passed while the connection waited: a started head is answered with
            # 408, an idle keep-alive connection just closes.
            if self._io.buffer:
                timeout = RequestTimeout("the request head was not completed in time")
                await self._front_error(timeout, _ErrorContext(self._new_request_id()))
            return
        upgraded, self._relay = self._relay, None
        if upgraded is not None:
            # What a handler handed back after a 101 (edge.http_messages.Handler).
            relay, request_id = upgraded
            try:
                await relay()
            except Exception:
                log.exception("relay failed request=%s", request_id)

    async def _serve_requests(self) -> None:
        first = True
        while True:
            try:
                head_end = await self._read_head(first)
                if head_end is None:
                    return
            except RequestRejected as exc:
                await self._front_error(exc, _ErrorContext(self._new_request_id()))
                return
            first = False
            if not await self._serve_one(head_end):
                return

    async def close(self) -> None:
        stream = self._io.stream
        self._io.closing()
        try:
            if self._linger and not self._upgraded and not self._io.eof:
                await self._linger_close(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if isinstance(stream, trio.SocketStream):
                # Plain TCP has nothing to say on the way out, and the connection's task ends
                # here, its reads done: closing needs no scheduling round and no waking.
                close_unwaited(stream.socket)
            else:
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

    async def _read_head(self, first: bool) -> int | None:
        """Wait for a complete, well-formed head in the buffer; its end, None if the client left.

        The idle timeout runs until the head's first byte, the header timeout from then on (from
        the start on a new connection); a timeout that passes cancels the connection's waiting
        scope (see ``run``)."""
        io, limits, deadlines = self._io, self._limits, self._deadlines
        wait = deadlines.start(self, limits.header_timeout if first else limits.idle_timeout)
        head_timed = first
        search_from = 0
        try:
            while True:
                while io.buffer.startswith(b"\r\n"):
                    del io.buffer[:2]
                    search_from = 0
                if io.buffer:
                    end = find_head_end(io.buffer, search_from)
                    if end is not None:
                        if end > limits.max_header_bytes:
                            raise HeadersTooLarge("the request head is too large")
                        # Bare CR or LF and obs-fold never reach a handler either: parse_head
                        # splits lines on CRLF only and accepts no line that is not a token, a
                        # colon and a control-free value.
                        if io.buffer.count(b"\n", 0, end) - 2 > limits.max_headers:
                            raise HeadersTooLarge("too many request headers")
                        return end
                    if len(io.buffer) > limits.max_header_bytes:
                        raise HeadersTooLarge("the request head is too large")
                    search_from = max(0, len(io.buffer) - 3)
                    if not head_timed:
                        # A head has begun and is not complete: the header timeout runs from
                        # now (a head that arrives whole never needs it).
                        deadlines.finish(wait)
                        wait = deadlines.start(self, limits.header_timeout)
                        head_timed = True
                if io.eof:
                    return None
                if self._timed_out:
                    raise ClientDisconnected("the connection timed out")  # see run()
                io.buffer += await io.receive()
        finally:
            deadlines.finish(wait)

    # --- one request -----------------------------------------------------------------------

    async def _serve_one(self, head_end: int) -> bool:
        """Parse, hand to the handler, check the outcome; ``True`` to keep the connection."""
        context = _ErrorContext(self._new_request_id())
        try:
            request, upgrade_requested = self._take_request(head_end, context)
        except RequestRejected as exc:
            await self._front_error(exc, context)
            return False
        return await self._run_handler(request, upgrade_requested, context)

    def _take_request(self, head_end: int, context: _ErrorContext) -> tuple[IncomingRequest, bool]:
        """Cut the head out of the buffer and build its request.

        Not a coroutine on purpose: the raw head and its header list die here, instead of
        staying in a suspended frame for as long as the request runs.
        """
        io = self._io
        head = bytes(io.buffer[:head_end])
        del io.buffer[:head_end]
        method, target, version, raw_headers = parse_head(head)
        context.method = method
        return self._build_request(method, target, version, raw_headers, context)

    def _build_request(
        self,
        method: str,
        raw_target: bytes,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        context: _ErrorContext,
    ) -> tuple[IncomingRequest, bool]:
        limits = self._limits
        if len(raw_headers) > limits.max_headers:
            raise HeadersTooLarge("too many request headers")
        if version not in ("1.0", "1.1"):
            raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served here")
        if method == "CONNECT":
            raise BadRequest("CONNECT is not supported")
        try:
            facts = header_facts(raw_headers, version)
        except HeaderListRejected as rejected:
            context.accept, context.host = rejected.accept, rejected.host
            raise
        context.accept = facts.accept
        host = facts.host
        context.host = host.host
        target = _ascii(raw_target, "request target")
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
        content_length = facts.content_length
        if (
            limits.max_body_bytes is not None
            and content_length is not None
            and content_length > limits.max_body_bytes
        ):
            raise PayloadTooLarge("the request body is larger than allowed")

        cleaned = clean_request_headers(
            raw_headers,
            method=method,
            host_value=facts.host_value,
            peer_ip=self._peer_ip,
            scheme=self._scheme,
            trusted_proxies=self._trusted_proxies,
        )
        request = IncomingRequest(
            method=method,
            host=host.host,
            port=host.port,
            path=canonical.path,
            query=canonical.query,
            headers=list(cleaned.headers),  # the cleaned list may be shared
            client_ip=cleaned.client_ip,
            peer_ip=self._peer_ip,
            scheme=cleaned.scheme,
            http_version=version,
            is_websocket_upgrade=cleaned.is_websocket_upgrade,
            expects_continue=facts.expects_continue,
            content_length=content_length,
            request_id=context.request_id,
            chunked=facts.chunked,
            close_requested=b"close" in cleaned.connection_tokens,
        )
        return request, facts.upgrade_requested

    async def _run_handler(
        self,
        request: IncomingRequest,
        upgrade_requested: bool,
        context: _ErrorContext,
    ) -> bool:
        body = RequestBody(
            self._io,
            length=request.content_length,
            chunked=request.chunked,
            expects_continue=request.expects_continue,
        )
        writer = ResponseWriter(self._io, request, body, upgrade_requested=upgrade_requested)
        relay = None
        try:
            relay = await self._handler(request, body, writer)
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
            if relay is not None:
                self._relay = (relay, request.request_id)
            return False
        if relay is not None:
            log.error("handler returned a relay without an upgrade request=%s", request.request_id)
        if not writer.started:
            log.error(
                "handler returned no response request=%s host=%s", request.request_id, request.host
            )
            detail = "The gateway produced no response for this request."
            await self._front_error(
                RequestRejected(detail, status=502), context, "origin_unreachable"
            )
            return False
        if not writer.finished or upgrade_requested:
            self._linger = True
            return False
        body.drain_buffered()
        if writer.must_close:
            # A complete exchange on a connection that ends here: drain politely only when
            # the client sent bytes we did not read, so closing cannot reset the answer.
            self._linger = not body.complete or bool(self._io.buffer)
            return False
        if body.complete:
            return True  # a pipelined next request, if any, is already in the buffer
        self._linger = True
        return False

    async def _front_error(
        self, exc: RequestRejected, context: _ErrorContext, code: str | None = None
    ) -> None:
        """Answer with a standard page written directly, whatever state the exchange is in."""
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


def _ascii(value: bytes, what: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(f"the {what} contains non-ASCII bytes") from None


def _sni_host(server_name: str | None) -> str | None:
    if server_name is None:
        return None
    try:
        return parse_host_header(server_name).host
    except BadRequest:
        return None
