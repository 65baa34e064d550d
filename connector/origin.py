"""Serves one tunnel stream against a local origin: the connector's hot path.

For every stream the edge opens, :class:`OriginDispatcher` matches the ingress table and then:

- ``http://``, ``https://``, ``unix:``, ``unix+tls:``: forwards the request with a pooled,
  keep-alive h11 client (an HTTP client library under trio costs several times more per
  request). The request body and the response body are streamed concurrently, each held back
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
import math
import select
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import h11
import trio

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

log = logging.getLogger(__name__)

__all__ = ["OriginDispatcher", "TunnelStreamLike"]

CHUNK = 65536
MAX_RESPONSE_HEAD = 64 * 1024
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

    async def send_head(self, head: dict[str, Any], end_stream: bool = False) -> None: ...

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


class OriginConnection:
    """One HTTP/1.1 connection to an origin, driven by h11; origin I/O errors become
    :class:`OriginUnreachable`."""

    __slots__ = ("h11", "idle_since", "received_any", "reusable", "reused", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.idle_since = 0.0
        self.reused = False
        self.received_any = False
        self.reusable = True

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except _ORIGIN_IO_ERRORS as exc:
            self.reusable = False
            raise OriginUnreachable(f"origin connection broke while sending: {exc}") from exc

    def poll_event(self) -> Any:
        """The next event already buffered, or ``h11.NEED_DATA``."""
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            self.reusable = False
            raise OriginUnreachable(f"origin broke HTTP/1.1: {exc}") from exc
        if type(event) is h11.ConnectionClosed:
            self.reusable = False
            raise OriginUnreachable("origin closed the connection mid-exchange")
        return event

    async def next_event(self) -> Any:
        while True:
            event = self.poll_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(CHUNK)
            except _ORIGIN_IO_ERRORS as exc:
                self.reusable = False
                raise OriginUnreachable(f"origin connection broke: {exc}") from exc
            if data:
                self.received_any = True
            self.h11.receive_data(cast(bytes, data))  # h11 takes any bytes-like

    @property
    def exchange_complete(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _idle_connection_alive(stream: trio.abc.Stream) -> bool:
    """An idle keep-alive socket must have nothing to read: readable means closed (or junk)."""
    sock = _socket_of(stream)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return not poller.poll(0)


def _deadline_after(seconds: float) -> float:
    return trio.current_time() + seconds if seconds > 0 else math.inf


class OriginPool:
    """Idle keep-alive connections per origin, most recently used first."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._idle: dict[tuple[HttpService, OriginRequest], deque[OriginConnection]] = {}
        self._tls_contexts: dict[tuple[bool, Path | None], ssl.SSLContext] = {}
        self._closed = False

    async def acquire(self, service: HttpService, options: OriginRequest) -> OriginConnection:
        idle = self._idle.get((service, options))
        if idle:
            now = self._clock()
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < options.keep_alive_timeout and \
                        _idle_connection_alive(conn.stream):
                    conn.reused = True
                    conn.received_any = False
                    return conn
                await trio.aclose_forcefully(conn.stream)
        return OriginConnection(await self.connect(service, options))

    async def release(self, conn: OriginConnection, service: HttpService,
                      options: OriginRequest) -> None:
        if self._closed or not conn.reusable or not conn.exchange_complete or \
                options.keep_alive_connections == 0:
            await trio.aclose_forcefully(conn.stream)
            return
        conn.h11.start_next_cycle()
        conn.idle_since = now = self._clock()
        idle = self._idle.setdefault((service, options), deque())
        idle.append(conn)
        while idle and (len(idle) > options.keep_alive_connections or
                        now - idle[0].idle_since >= options.keep_alive_timeout):
            await trio.aclose_forcefully(idle.popleft().stream)

    async def discard(self, conn: OriginConnection) -> None:
        await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)

    def tls_context(self, options: OriginRequest) -> ssl.SSLContext:
        key = (options.no_tls_verify, options.ca_pool)
        context = self._tls_contexts.get(key)
        if context is None:
            context = ssl.create_default_context(
                cafile=str(options.ca_pool) if options.ca_pool else None)
            if options.no_tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_contexts[key] = context
        return context

    async def connect(self, service: HttpService | TcpService,
                      options: OriginRequest) -> trio.abc.Stream:
        """Open (and for TLS services, handshake) within ``connectTimeout``."""
        try:
            with trio.fail_at(_deadline_after(options.connect_timeout)):
                if isinstance(service, HttpService) and service.unix_path is not None:
                    raw: trio.abc.Stream = await trio.open_unix_socket(service.unix_path)
                else:
                    raw = await trio.open_tcp_stream(service.host, service.port)
                if not (isinstance(service, HttpService) and service.tls):
                    return raw
                try:
                    tls = trio.SSLStream(
                        raw, self.tls_context(options),
                        server_hostname=options.origin_server_name or service.host,
                        https_compatible=True)
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(raw)
                    raise
                return tls
        except trio.TooSlowError:
            raise OriginTimeout(f"connecting to {service} took longer than "
                                f"{options.connect_timeout:g}s") from None
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            cause = exc.__cause__ or exc
            log.warning("TLS with origin %s failed: %s", service, cause)
            raise OriginUnreachable(f"TLS with {service} failed: {cause}") from exc
        except OSError as exc:
            raise OriginUnreachable(f"cannot connect to {service}: {exc}") from exc

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._idle.values())


class _Exchange:
    """What the two halves of one forwarded request tell each other."""

    __slots__ = ("error", "request_done")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.request_done = False


class OriginDispatcher:
    """Serves tunnel streams per the ingress table; owns the origin connection pool.

    Close it (``aclose`` or ``async with``) to close idle origin connections.
    """

    def __init__(self, table: IngressTable, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.table = table
        self.pool = OriginPool(clock)

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
        method, target, headers, body_mode, websocket = _request_parts(head, options)
        first_chunk = b""
        if body_mode == "unknown":
            first_chunk = bytes(await stream.receive_some(CHUNK))
            body_mode = "stream" if first_chunk else "none"
            if first_chunk:
                headers.append((b"transfer-encoding", b"chunked"))
        try:
            request = h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as exc:
            raise StreamAbort(ErrorCode.PROTOCOL_ERROR, f"bad request head: {exc}") from None
        for attempt in (1, 2):
            conn = await self.pool.acquire(service, options)
            try:
                if body_mode == "none":
                    try:
                        await conn.send(request, h11.EndOfMessage())
                        with trio.fail_at(_deadline_after(options.response_header_timeout)):
                            response = await _read_response_head(conn, allow_101=websocket)
                    except OriginUnreachable:
                        if attempt == 1 and conn.reused and not conn.received_any:
                            await self.pool.discard(conn)
                            continue
                        raise
                    except trio.TooSlowError:
                        raise _response_timeout(service, options) from None
                    if websocket and response.status_code == 101:
                        await self._relay_upgraded(stream, conn, response)
                        await self.pool.discard(conn)
                        return
                    await _forward_response(stream, conn, response)
                else:
                    await self._exchange_with_body(stream, conn, request, first_chunk,
                                                   service, options)
            except BaseException:
                await self.pool.discard(conn)
                raise
            await self.pool.release(conn, service, options)
            return

    async def _exchange_with_body(self, stream: TunnelStreamLike, conn: OriginConnection,
                                  request: h11.Request, first_chunk: bytes,
                                  service: HttpService, options: OriginRequest) -> None:
        await conn.send(request)
        exchange = _Exchange()
        head_wait = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump_request_body, stream, conn, first_chunk, exchange,
                               head_wait, options.response_header_timeout, nursery.cancel_scope)
            try:
                with head_wait:
                    response = await _read_response_head(conn)
                if head_wait.cancelled_caught:
                    raise _response_timeout(service, options)
                await _forward_response(stream, conn, response)
            except (OriginError, *TUNNEL_ERRORS) as exc:
                exchange.error = exc
            # The answer is complete (or failed); a request body still flowing is abandoned.
            if not exchange.request_done:
                conn.reusable = False
            nursery.cancel_scope.cancel()
        if exchange.error is not None:
            raise exchange.error

    async def _relay_upgraded(self, stream: TunnelStreamLike, conn: OriginConnection,
                              response: h11.InformationalResponse) -> None:
        conn.reusable = False
        await stream.send_head({"status": 101, "headers": _head_headers(response, keep_all=True)})
        pending, _closed = conn.h11.trailing_data
        await _relay(stream, conn.stream, pending)

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
        for name, value in head.get("headers") or ():
            lname = name.lower()
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
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
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
        length = next(v for n, v in headers if n.lower() == b"content-length")
        return method, target, headers, "none" if length.strip() == b"0" else "stream", False
    return method, target, headers, "unknown", False


async def _read_response_head(conn: OriginConnection, *, allow_101: bool = False) -> Any:
    """The final response head, or a 101 to an upgrade; other 1xx (100 Continue) are skipped."""
    while True:
        event = await conn.next_event()
        if type(event) is h11.Response:
            return event
        if type(event) is h11.InformationalResponse:
            if event.status_code == 101:
                if allow_101:
                    return event
                raise OriginUnreachable("origin switched protocols without being asked")
            continue
        raise OriginUnreachable(f"origin sent {type(event).__name__} instead of a response")


def _head_headers(response: h11.Response | h11.InformationalResponse, *,
                  keep_all: bool = False) -> list[list[str]]:
    return [[name.decode("latin-1"), value.decode("latin-1")]
            for name, value in response.headers.raw_items()
            if keep_all or name.lower() not in HOP_BY_HOP_BYTES]


async def _forward_response(stream: TunnelStreamLike, conn: OriginConnection,
                            response: h11.Response) -> None:
    head = {"status": response.status_code, "headers": _head_headers(response)}
    event = conn.poll_event()
    if type(event) is h11.EndOfMessage:
        await stream.send_head(head, end_stream=True)
        return
    await stream.send_head(head)
    while True:
        if event is h11.NEED_DATA:
            event = await conn.next_event()
        kind = type(event)
        if kind is h11.Data:
            await stream.send_all(event.data)
            event = conn.poll_event()
        elif kind is h11.EndOfMessage:
            break
        else:
            raise OriginUnreachable(f"origin sent {kind.__name__} inside a response body")
    await stream.send_eof()


async def _pump_request_body(stream: TunnelStreamLike, conn: OriginConnection,
                             first_chunk: bytes, exchange: _Exchange,
                             head_wait: trio.CancelScope, response_header_timeout: float,
                             cancel_all: trio.CancelScope) -> None:
    try:
        if first_chunk:
            await conn.send(h11.Data(data=first_chunk))
        while chunk := await stream.receive_some(CHUNK):
            await conn.send(h11.Data(data=cast(bytes, chunk)))  # h11 takes any bytes-like
        await conn.send(h11.EndOfMessage())
        exchange.request_done = True
    except TUNNEL_ERRORS as exc:
        exchange.error = exc
        cancel_all.cancel()
    except h11.LocalProtocolError as exc:
        # The body did not match its Content-Length: the visitor's side broke off.
        exchange.error = StreamAbort(ErrorCode.PROTOCOL_ERROR, f"request body: {exc}")
        cancel_all.cancel()
    except OriginUnreachable:
        # The origin stopped reading; its answer (a 413, say) may still explain why.
        conn.reusable = False
    finally:
        # Like Go's ResponseHeaderTimeout: the wait for the answer starts once the request
        # is written, so a long upload is not cut short by it.
        head_wait.deadline = _deadline_after(response_header_timeout)


async def _relay(stream: TunnelStreamLike, origin: trio.abc.Stream, pending: bytes) -> None:
    """Copy bytes both ways until both directions have ended, passing half-closes on."""
    failures: list[BaseException] = []

    async def origin_receive(max_bytes: int) -> bytes | bytearray:
        try:
            return await origin.receive_some(max_bytes)
        except _ORIGIN_IO_ERRORS as exc:
            raise OriginUnreachable(f"origin connection broke: {exc}") from exc

    async def origin_send(data: bytes | bytearray) -> None:
        try:
            await origin.send_all(data)
        except _ORIGIN_IO_ERRORS as exc:
            raise OriginUnreachable(f"origin connection broke: {exc}") from exc

    async def origin_end() -> None:
        if isinstance(origin, trio.abc.HalfCloseableStream):  # TLS cannot half-close
            with contextlib.suppress(*_ORIGIN_IO_ERRORS):
                await origin.send_eof()

    async def copy(receive: Callable[[int], Awaitable[bytes | bytearray]],
                   send: Callable[[bytes | bytearray], Awaitable[None]],
                   end: Callable[[], Awaitable[None]], first: bytes) -> None:
        try:
            if first:
                await send(first)
            while chunk := await receive(CHUNK):
                await send(chunk)
            await end()
        except (OriginUnreachable, *TUNNEL_ERRORS) as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, stream.receive_some, origin_send, origin_end, b"")
        nursery.start_soon(copy, origin_receive, stream.send_all, stream.send_eof, pending)
    if failures:
        raise failures[0]


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
