"""Serves one tunnel stream against a local origin: the connector's hot path.

For every stream the edge opens, :class:`OriginDispatcher` matches the ingress table and then:

- ``http://``, ``https://``, ``unix:``, ``unix+tls:``: forwards the request with the pooled,
  keep-alive HTTP/1.1 client of ``connector.origin_pool`` (a general-purpose HTTP library
  under trio costs several times more per request). The request body and the response body are streamed concurrently, each held back
  by the other side's flow control; nothing is buffered whole.
- a WebSocket upgrade: forwards the handshake; after a 101 relays raw bytes both ways.
- ``tcp://``, ``ssh://``: opens the connection, answers status 200, relays bytes with half-close.
- ``http_status:N`` and ``hello_world``: answered here.

Origin failures become a stream reset the edge turns into a page: ORIGIN_UNREACHABLE (502) for
refused, unresolvable, TLS failure or a connection that broke; ORIGIN_TIMEOUT (504) for a slow
connect or response head. A failure on the tunnel side (the visitor went away, the edge reset
the stream) just ends the exchange and drops the origin connection.

Request body framing follows the head: ``Content-Length`` is kept, ``Transfer-Encoding`` means
chunked to the origin, and with neither the first read of the stream decides (an immediate end
means no body, anything else is sent chunked) because the edge drops hop-by-hop framing headers.
``X-Forwarded-For`` and ``X-Forwarded-Proto`` are added from the head when absent.

Pooled connections are reused only after a complete exchange on both sides that did not say
``Connection: close``; an idle one is dropped after ``keepAliveTimeout`` or if the origin has
closed it meanwhile, and a request without a body that fails on a reused connection before any
byte of answer is retried once on a fresh one (the origin may have closed it as we sent).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import trio

from connector.access import AccessVerificationError, AssertionVerifier
from connector.errors import ErrorCode, OriginError, OriginTimeout, OriginUnreachable
from connector.ingress import (
    HelloWorldService,
    HttpService,
    IngressTable,
    NoIngressMatch,
    OriginRequest,
    StatusService,
    TcpService,
)
from connector.origin_pool import (
    BODY_CHUNK,
    InvalidRequest,
    OriginConnection,
    OriginPool,
    ResponseHead,
    encode_request_head,
    idle_connection_alive,
)
from tunnel.bounded_memo import BoundedMemo
from tunnel.deadlines import DeadlineKeeper, Wait, deadline_keeper

log = logging.getLogger(__name__)

__all__ = ["OriginDispatcher", "TunnelStreamLike"]

CHUNK = 65536
# Headers about one hop; they are re-derived per hop, never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
     "upgrade", "host"}
)
HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
# Errors of the tunnel side: StreamReset and SessionClosed subclass BrokenResourceError.
TUNNEL_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_ORIGIN_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class TunnelStreamLike(Protocol):
    """The part of ``tunnel.streams.TunnelStream`` the dispatcher uses."""

    @property
    def head(self) -> Mapping[str, Any]: ...

    @property
    def remote_finished(self) -> bool: ...

    async def send_head(self, head: dict[str, Any], end_stream: bool = False) -> None: ...

    async def send_response(self, head: dict[str, Any], body: bytes) -> bool: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...

    def reset(self, code: ErrorCode) -> object: ...


class StreamAbort(Exception):
    """The exchange cannot go on for a reason that is not the origin's; reset with ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


_idle_connection_alive = idle_connection_alive


def _idle_connection_alive_now(stream: trio.abc.Stream) -> bool:
    """The pool's idle check, looked up at each call so it can be replaced in this module."""
    return _idle_connection_alive(stream)


class _Exchange:
    """What the two halves of one forwarded request tell each other."""

    __slots__ = ("error", "head_read", "head_wait", "request_done")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.request_done = False
        self.head_read = False
        self.head_wait: Wait | None = None


class OriginDispatcher:
    """Serves tunnel streams per the ingress table; owns the origin connection pool.

    Close it (``aclose`` or ``async with``) to close idle origin connections. The wait for a
    response head is timed by the run's deadline keeper (``tunnel.deadlines``).
    """

    def __init__(self, table: IngressTable, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.table = table
        self.pool = OriginPool(clock, idle_check=_idle_connection_alive_now)
        self.access = AssertionVerifier()
        self._deadlines: DeadlineKeeper | None = None

    @property
    def deadlines(self) -> DeadlineKeeper:
        if self._deadlines is None:
            self._deadlines = deadline_keeper()
        return self._deadlines

    async def __aenter__(self) -> OriginDispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def serve_stream(self, stream: TunnelStreamLike) -> None:
        """Answer one stream; never raises for origin or tunnel failures, always closes it."""
        try:
            await self._dispatch(stream)
        except OriginError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("stream %s: origin failure: %s", _stream_id(stream), exc)
            await _reset_quietly(stream, exc.reset_code)
        except StreamAbort as exc:
            log.debug("stream %s: aborted: %s", _stream_id(stream), exc)
            await _reset_quietly(stream, exc.code)
        except TUNNEL_ERRORS as exc:
            log.debug("stream %s: tunnel side ended: %r", _stream_id(stream), exc)
        except Exception:
            log.exception("stream %s: unexpected failure", _stream_id(stream))
            await _reset_quietly(stream, ErrorCode.INTERNAL_ERROR)
        finally:
            try:
                await stream.aclose()
            except TUNNEL_ERRORS:
                pass

    async def _dispatch(self, stream: TunnelStreamLike) -> None:
        head = stream.head
        kind = head.get("kind", "http")
        host = head.get("host")
        if not isinstance(host, str):
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR, "request head without a host")
        target = head.get("target", "/") if kind == "http" else ""
        if not isinstance(target, str):
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR, "request head with a bad target")
        try:
            index, rule = self.table.match(host, target.partition("?")[0])
        except NoIngressMatch:
            raise StreamAbort(ErrorCode.NO_INGRESS, f"no ingress rule for {host}") from None
        service = rule.service
        requirement = rule.origin_request.access
        if requirement is not None:
            try:
                await self.access.check(head, requirement)
            except AccessVerificationError as exc:
                log.warning("stream %s: refused for %s: %s", _stream_id(stream), host, exc)
                raise StreamAbort(ErrorCode.ACCESS_DENIED, str(exc)) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream %s: %s %s %s%s -> rule #%d %s", _stream_id(stream), kind,
                      head.get("method", ""), host, target, index + 1, service)
        if kind == "tcp":
            if not isinstance(service, TcpService):
                raise StreamAbort(ErrorCode.NO_INGRESS, f"rule for {host} is not a tcp service")
            await self._serve_tcp(stream, service, rule.origin_request)
        elif kind != "http":
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR, f"unknown stream kind {kind!r}")
        elif isinstance(service, HttpService):
            await self._serve_http(stream, head, service, rule.origin_request)
        elif isinstance(service, StatusService):
            await stream.send_head({"status": service.status,
                                    "headers": [["content-length", "0"]]}, end_stream=True)
        elif isinstance(service, HelloWorldService):
            await _serve_hello_world(stream, head)
        else:
            raise StreamAbort(ErrorCode.NO_INGRESS, f"rule for {host} serves only raw tcp")

    # -- HTTP -------------------------------------------------------------------------------

    async def _serve_http(self, stream: TunnelStreamLike, head: Mapping[str, Any],
                          service: HttpService, options: OriginRequest) -> None:
        upgraded = await self._forward_http(stream, head, service, options)
        if upgraded is None:
            return
        # The relay runs here, once the request's frame (its headers, the response head) is
        # gone: an upgraded connection may stay open for days, and there may be thousands.
        try:
            await _relay(stream, upgraded.stream, upgraded.pending)
        finally:
            await self.pool.discard(upgraded)

    async def _forward_http(self, stream: TunnelStreamLike, head: Mapping[str, Any],
                            service: HttpService, options: OriginRequest
                            ) -> OriginConnection | None:
        """Forward one exchange; after a 101 to a WebSocket upgrade, the connection to relay."""
        method, target, headers, body_mode, websocket, request_head = _origin_request(
            head, options)
        headers_sent: Sequence[tuple[bytes, bytes]] = headers
        first_chunk = b""
        if body_mode == "unknown" and stream.remote_finished:
            body_mode = "none"  # the edge opened the stream already ended: no body
        if body_mode == "unknown":
            first_chunk = bytes(await stream.receive_some(CHUNK))
            body_mode = "stream" if first_chunk else "none"
            if first_chunk:
                headers_sent = [*headers, (b"transfer-encoding", b"chunked")]
                request_head = _encode_or_abort(method, target, headers_sent)
        head_request = method == b"HEAD"
        deadlines = self.deadlines
        for attempt in (1, 2):
            conn = await self.pool.acquire(service, options)
            try:
                if body_mode == "none":
                    try:
                        await conn.send(request_head)
                        conn.request_done = True
                        wait = deadlines.start(conn, options.response_header_timeout)
                        try:
                            response = await _read_response_head(
                                conn, head_request=head_request, allow_101=websocket)
                        finally:
                            deadlines.finish(wait)
                    except OriginUnreachable:
                        if conn.head_timed_out:
                            raise _response_timeout(service, options) from None
                        if attempt == 1 and conn.reused and not conn.received_any:
                            await self.pool.discard(conn)
                            continue
                        raise
                    if websocket and response.status == 101:
                        conn.reusable = False
                        await stream.send_head({"status": 101,
                                                "headers": _head_headers(response, keep_all=True)})
                        return conn
                    await _forward_response(stream, conn, response)
                else:
                    await self._exchange_with_body(stream, conn, request_head, first_chunk,
                                                   _body_framing(headers_sent), head_request,
                                                   service, options)
            except BaseException:
                await self.pool.discard(conn)
                raise
            await self.pool.release(conn, service, options)
            return None
        raise AssertionError("not reached: the second attempt returns or raises")

    async def _exchange_with_body(self, stream: TunnelStreamLike, conn: OriginConnection,
                                  request_head: bytes, first_chunk: bytes,
                                  declared_length: int | None, head_request: bool,
                                  service: HttpService, options: OriginRequest) -> None:
        await conn.send(request_head)
        exchange = _Exchange()
        deadlines = self.deadlines
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump_request_body, stream, conn, first_chunk, declared_length,
                               exchange, deadlines, options.response_header_timeout,
                               nursery.cancel_scope)
            try:
                try:
                    response = await _read_response_head(conn, head_request=head_request)
                except OriginUnreachable:
                    if conn.head_timed_out:
                        raise _response_timeout(service, options) from None
                    raise
                finally:
                    exchange.head_read = True
                    deadlines.finish(exchange.head_wait)
                await _forward_response(stream, conn, response)
            except (OriginError, *TUNNEL_ERRORS) as exc:
                exchange.error = exc
            # The answer is complete (or failed); a request body still flowing is abandoned.
            if not exchange.request_done:
                conn.reusable = False
            nursery.cancel_scope.cancel()
        if exchange.error is not None:
            raise exchange.error

    # -- raw TCP ----------------------------------------------------------------------------

    async def _serve_tcp(self, stream: TunnelStreamLike, service: TcpService,
                         options: OriginRequest) -> None:
        origin = await self.pool.connect(service, options)
        async with origin:
            await stream.send_head({"status": 200})
            await _relay(stream, origin, b"")


def _response_timeout(service: HttpService, options: OriginRequest) -> OriginTimeout:
    return OriginTimeout(f"{service} sent no response head within "
                         f"{options.response_header_timeout:g}s")


_OriginRequest = tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...], str, bool, bytes]
"""Method, target, origin-bound headers, body mode, websocket, and the encoded request head."""


def _origin_request(head: Mapping[str, Any], options: OriginRequest) -> _OriginRequest:
    """What ``_request_parts`` makes of a head, with the request head encoded; a request seen
    before (the same method, target, host, headers, client and scheme for the same rule) is
    looked up. Heads that fail are never remembered."""
    raw_headers = head.get("headers")
    try:
        key = (head.get("method"), head.get("target"), head.get("host"),
               tuple(raw_headers) if type(raw_headers) is list else raw_headers,
               head.get("client"), head.get("scheme"), id(options))
        known = _ORIGIN_REQUESTS.get(key)
    except TypeError:  # something unhashable in a (malformed) head
        key, known = None, None
    if known is not None:
        return known[0]
    method, target, headers, body_mode, websocket = _request_parts(head, options)
    encoded = _encode_or_abort(method, target, headers)
    request: _OriginRequest = (method, target, tuple(headers), body_mode, websocket, encoded)
    if key is not None:
        # The options are kept with the entry, so their id in the key cannot be reused.
        _ORIGIN_REQUESTS.remember(key, (request, options), len(encoded))
    return request


def _encode_or_abort(method: bytes, target: bytes,
                     headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    try:
        return encode_request_head(method, target, list(headers))
    except InvalidRequest as exc:
        raise StreamAbort(ErrorCode.PROTOCOL_ERROR, f"bad request head: {exc}") from None


# Requests repeat (a poller, an API client, a page's assets): a request head made once for a rule
# is looked up afterwards. Bounded in entries and in the size of a head kept.
_ORIGIN_REQUESTS: BoundedMemo[tuple[object, ...], tuple[_OriginRequest, OriginRequest]] = (
    BoundedMemo(1024, 8192)
)


def _request_parts(head: Mapping[str, Any], options: OriginRequest
                   ) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], str, bool]:
    """Method, target, origin-bound headers, body mode (none/stream/unknown), websocket."""
    try:
        method = str(head["method"]).encode("ascii")
        target = str(head.get("target") or "/").encode("latin-1")
        host_header: str = head["host"]
        headers: list[tuple[bytes, bytes]] = []
        upgrade = None
        chunked = has_length = has_xff = has_proto = False
        known = _REQUEST_PAIRS.get
        for name, value in head.get("headers") or ():
            lname, encoded = known((name, value)) or _request_pair(name, value)
            if lname in HOP_BY_HOP:
                if lname == "host":
                    host_header = value
                elif lname == "transfer-encoding":
                    chunked = True
                elif lname == "upgrade":
                    upgrade = value
                continue
            if lname == "content-length":
                has_length = True
            elif lname == "x-forwarded-for":
                has_xff = True
            elif lname == "x-forwarded-proto":
                has_proto = True
            headers.append(encoded)
        headers.insert(0, (b"host", (options.http_host_header or host_header).encode("latin-1")))
        client = head.get("client")
        if not has_xff and isinstance(client, str) and client:
            headers.append((b"x-forwarded-for", client.encode("latin-1")))
        scheme = head.get("scheme")
        if not has_proto and isinstance(scheme, str) and scheme:
            headers.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    except (AttributeError, KeyError, TypeError, ValueError, UnicodeError) as exc:
        raise StreamAbort(ErrorCode.PROTOCOL_ERROR, f"malformed request head: {exc!r}") from None
    websocket = upgrade is not None and "websocket" in upgrade.lower()
    if websocket:
        assert upgrade is not None
        headers += [(b"connection", b"Upgrade"), (b"upgrade", upgrade.encode("latin-1"))]
        return method, target, headers, "none", True
    if chunked:
        headers = [h for h in headers if h[0].lower() != b"content-length"]
        headers.append((b"transfer-encoding", b"chunked"))
        return method, target, headers, "stream", False
    if has_length:
        length = next(v for n, v in headers if n.lower() == b"content-length").strip()
        if not length.isdigit() or len(length) > 18:
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR, "request head with a bad Content-Length")
        return method, target, headers, "none" if int(length) == 0 else "stream", False
    return method, target, headers, "unknown", False


def _body_framing(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The request body's declared length, or None when it is sent chunked."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value.strip())
    return None


async def _read_response_head(conn: OriginConnection, *, head_request: bool,
                              allow_101: bool = False) -> ResponseHead:
    """The final response head, or a 101 to an upgrade; other 1xx (100 Continue) are skipped."""
    while True:
        response = await conn.read_head(head_request=head_request)
        if response.status >= 200:
            return response
        if response.status == 101:
            if allow_101:
                return response
            raise OriginUnreachable("origin switched protocols without being asked")


def _head_headers(response: ResponseHead, *, keep_all: bool = False) -> list[tuple[str, str]]:
    """The response's headers as the tunnel head carries them (hop-by-hop ones left out unless
    ``keep_all``); worked out once per parsed head, which repeated heads share."""
    if not keep_all and response.forwarded is not None:
        return response.forwarded
    known = _RESPONSE_PAIRS.get
    pairs = []
    for name, value in response.headers:
        pair, hop_by_hop = known((name, value)) or _response_pair(name, value)
        if keep_all or not hop_by_hop:
            pairs.append(pair)
    if not keep_all:
        response.forwarded = pairs
    return pairs


# Requests and responses repeat their headers: a pair converted once between the tunnel head's
# text and the origin's bytes is looked up afterwards (bounded in entries and pair size).
_PAIR_MEMO_ENTRIES = 2048
_PAIR_MEMO_BYTES = 2048
_REQUEST_PAIRS: BoundedMemo[tuple[str, str], tuple[str, tuple[bytes, bytes]]] = BoundedMemo(
    _PAIR_MEMO_ENTRIES, _PAIR_MEMO_BYTES
)
_RESPONSE_PAIRS: BoundedMemo[tuple[bytes, bytes], tuple[tuple[str, str], bool]] = BoundedMemo(
    _PAIR_MEMO_ENTRIES, _PAIR_MEMO_BYTES
)


def _request_pair(name: str, value: str) -> tuple[str, tuple[bytes, bytes]]:
    """A head's header: its lower-case name, and the pair as the origin gets it."""
    converted = (name.lower(), (name.encode("latin-1"), value.encode("latin-1")))
    return _REQUEST_PAIRS.remember((name, value), converted, len(name) + len(value))


def _response_pair(name: bytes, value: bytes) -> tuple[tuple[str, str], bool]:
    """An origin's header as the tunnel head carries it, and whether it is hop-by-hop."""
    converted = ((name.decode("latin-1"), value.decode("latin-1")),
                 name.lower() in HOP_BY_HOP_BYTES)
    return _RESPONSE_PAIRS.remember((name, value), converted, len(name) + len(value))


async def _forward_response(stream: TunnelStreamLike, conn: OriginConnection,
                            response: ResponseHead) -> None:
    head = {"status": response.status, "headers": _head_headers(response)}
    # The usual small answer is in the buffer whole: head, body and end go out together.
    whole = b"" if conn.response_done else conn.take_whole_body()
    if whole is not None and await stream.send_response(head, whole):
        return
    if whole:
        # Larger than the stream's credit: the same bytes, sent as flow control allows.
        await stream.send_head(head)
        await stream.send_all(whole)
        await stream.send_eof()
        return
    await stream.send_head(head)
    while data := await conn.read_body():
        await stream.send_all(data)
    await stream.send_eof()


async def _pump_request_body(stream: TunnelStreamLike, conn: OriginConnection,
                             first_chunk: bytes, declared_length: int | None,
                             exchange: _Exchange, deadlines: DeadlineKeeper,
                             response_header_timeout: float,
                             cancel_all: trio.CancelScope) -> None:
    left = declared_length
    try:
        chunk: bytes | bytearray = first_chunk
        while True:
            if not chunk:
                chunk = await stream.receive_some(BODY_CHUNK)
                if not chunk:
                    break
            if left is None:
                await conn.send(b"%x\r\n%b\r\n" % (len(chunk), bytes(chunk)))
            else:
                left -= len(chunk)
                if left < 0:
                    raise StreamAbort(ErrorCode.PROTOCOL_ERROR,
                                      "request body: longer than its Content-Length")
                await conn.send(chunk)
            chunk = b""
        if left is None:
            await conn.send(b"0\r\n\r\n")
        elif left:
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR,
                              "request body: shorter than its Content-Length")
        conn.request_done = True
        exchange.request_done = True
    except TUNNEL_ERRORS as exc:
        exchange.error = exc
        cancel_all.cancel()
    except StreamAbort as exc:
        # The body did not match its Content-Length: the visitor's side broke off.
        exchange.error = exc
        cancel_all.cancel()
    except OriginUnreachable:
        # The origin stopped reading; its answer (a 413, say) may still explain why.
        conn.reusable = False
    finally:
        # Like Go's ResponseHeaderTimeout: the wait for the answer starts once the request
        # is written, so a long upload is not cut short by it (nor an answer already read).
        if not exchange.head_read:
            exchange.head_wait = deadlines.start(conn, response_header_timeout)


async def _relay(stream: TunnelStreamLike, origin: trio.abc.Stream, pending: bytes) -> None:
    """Copy bytes both ways until both directions have ended, passing half-closes on.

    An upgraded connection may stay open, idle, for days, and the connector may hold
    thousands, so a relay holds little: the calling task copies the origin's bytes itself and
    only the other direction gets a task, and the copies are plain functions, not closures.
    """
    failures: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_copy_to_origin, stream, origin, failures, nursery.cancel_scope)
        await _copy_from_origin(origin, stream, pending, failures, nursery.cancel_scope)
    if failures:
        raise failures[0]


async def _copy_to_origin(stream: TunnelStreamLike, origin: trio.abc.Stream,
                          failures: list[BaseException], cancel_all: trio.CancelScope) -> None:
    try:
        while chunk := await stream.receive_some(CHUNK):
            try:
                await origin.send_all(chunk)
            except _ORIGIN_IO_ERRORS as exc:
                raise OriginUnreachable(f"origin connection broke: {exc}") from exc
        if isinstance(origin, trio.abc.HalfCloseableStream):  # TLS cannot half-close
            with contextlib.suppress(*_ORIGIN_IO_ERRORS):
                await origin.send_eof()
    except (OriginUnreachable, *TUNNEL_ERRORS) as exc:
        failures.append(exc)
        cancel_all.cancel()


async def _copy_from_origin(origin: trio.abc.Stream, stream: TunnelStreamLike, pending: bytes,
                            failures: list[BaseException], cancel_all: trio.CancelScope) -> None:
    # Unless the last read filled a whole chunk (so more is likely waiting), the next bytes
    # are awaited with wait_readable before reading: parked there, a task holds about half the
    # memory it holds parked inside receive_some, and an idle WebSocket spends its life
    # waiting. Only for plain sockets: TLS may hold decrypted bytes the socket does not show.
    sock = origin.socket if isinstance(origin, trio.SocketStream) else None
    more_waiting = False
    try:
        if pending:
            await stream.send_all(pending)
        while True:
            try:
                if sock is not None and not more_waiting:
                    await trio.lowlevel.wait_readable(sock)
                chunk = await origin.receive_some(CHUNK)
            except _ORIGIN_IO_ERRORS as exc:
                raise OriginUnreachable(f"origin connection broke: {exc}") from exc
            if not chunk:
                break
            await stream.send_all(chunk)
            more_waiting = len(chunk) == CHUNK
        await stream.send_eof()
    except (OriginUnreachable, *TUNNEL_ERRORS) as exc:
        failures.append(exc)
        cancel_all.cancel()


async def _serve_hello_world(stream: TunnelStreamLike, head: Mapping[str, Any]) -> None:
    page = HelloWorldService.render(head)
    headers = [["content-type", "text/html; charset=utf-8"],
               ["content-length", str(len(page))], ["cache-control", "no-store"]]
    if head.get("method") == "HEAD":
        await stream.send_head({"status": 200, "headers": headers}, end_stream=True)
        return
    await stream.send_head({"status": 200, "headers": headers})
    await stream.send_all(page)
    await stream.send_eof()


async def _reset_quietly(stream: TunnelStreamLike, code: ErrorCode) -> None:
    try:
        result = stream.reset(code)
        if inspect.isawaitable(result):
            await result
    except TUNNEL_ERRORS:
        pass


def _stream_id(stream: TunnelStreamLike) -> object:
    return getattr(stream, "stream_id", "?")
