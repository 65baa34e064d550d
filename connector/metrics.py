"""The connector's Prometheus metrics, served by ``tunnel run --metrics HOST:PORT``.

A supervisor that serves metrics owns a ``ConnectorMetrics`` with its own ``CollectorRegistry``
(without ``--metrics`` there is none, and this module is not even imported). Streams are
counted by wrapping each tunnel stream in a ``MeteredStream`` before the origin dispatcher sees
it, so the dispatcher (the hot path) stays free of metric calls: the wrapper sees the response
head (status class), every chunk (bytes each way) and a reset (error kind, from the reset code).
HA connections and reconnects are read from the supervisor's state at scrape time.

All names start with ``tunnelgate_connector_``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunnel.protocol import ErrorCode

CONTENT_TYPE = CONTENT_TYPE_LATEST
CONNECTION_ERROR_KINDS = ("connect_failed", "handshake_refused", "registration_refused",
                          "permanent_refusal")


class ConnectionCounts(Protocol):
    """What the metrics read from ``connector.supervisor.ConnectorState``."""

    @property
    def ready_connections(self) -> int: ...

    reconnects: int


class StreamLike(Protocol):
    """The tunnel stream surface the origin dispatcher uses (``TunnelStreamLike``)."""

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


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def reset_kind(code: int) -> str:
    """``origin_unreachable`` for ErrorCode.ORIGIN_UNREACHABLE, and so on."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class _StateCollector(Collector):
    def __init__(self, state: ConnectionCounts) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("tunnelgate_connector_ha_connections",
                                "Tunnel connections registered with an edge right now.",
                                value=self._state.ready_connections)
        yield CounterMetricFamily("tunnelgate_connector_reconnects",
                                  "Times a tunnel connection was dialled again after it ended "
                                  "or failed.", value=self._state.reconnects)


class ConnectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunnelgate_connector_requests", "Streams answered with a response head, by status "
            "class.", ["status_class"], registry=self.registry)
        self.streams_total = Counter(
            "tunnelgate_connector_streams", "Tunnel streams served since start.",
            registry=self.registry)
        self.streams_open = Gauge(
            "tunnelgate_connector_streams_open", "Tunnel streams being served right now.",
            registry=self.registry)
        self.bytes_received = Counter(
            "tunnelgate_connector_bytes_received", "Request body bytes received from the edge.",
            registry=self.registry)
        self.bytes_sent = Counter(
            "tunnelgate_connector_bytes_sent", "Response body bytes sent to the edge.",
            registry=self.registry)
        self.errors = Counter(
            "tunnelgate_connector_errors", "Failures by kind: stream resets by reset code, "
            "tunnel connection failures.", ["kind"], registry=self.registry)
        self.auth_decisions = Counter(
            "tunnelgate_connector_auth_decisions", "Connector-side Access verification "
            "decisions, by outcome and reason.", ["decision", "reason"], registry=self.registry)
        self.config_reloads = Counter(
            "tunnelgate_connector_config_reloads", "Ingress reloads (SIGHUP), by result.",
            ["result"], registry=self.registry)
        # The children every answer counts in, looked up once (labels() takes a lock and
        # builds a key on each call).
        self.requests_by_class = {
            status: self.requests.labels(status) for status in ("2xx", "3xx", "4xx", "5xx")
        }
        for kind in CONNECTION_ERROR_KINDS:
            self.errors.labels(kind)
        for result in ("ok", "error"):
            self.config_reloads.labels(result)

    def observe_state(self, state: ConnectionCounts) -> None:
        self.registry.register(_StateCollector(state))

    def metered(self, stream: StreamLike) -> MeteredStream:
        return MeteredStream(stream, self)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def auth_decision(self, decision: str, reason: str) -> None:
        self.auth_decisions.labels(decision, reason).inc()

    def config_reload(self, result: str) -> None:
        self.config_reloads.labels(result).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MeteredStream:
    """A tunnel stream that counts what passes through it; otherwise the stream itself."""

    __slots__ = ("_closed", "_metrics", "_stream")

    def __init__(self, stream: StreamLike, metrics: ConnectorMetrics) -> None:
        self._stream = stream
        self._metrics = metrics
        self._closed = False
        metrics.streams_total.inc()
        metrics.streams_open.inc()

    @property
    def head(self) -> Mapping[str, Any]:
        return self._stream.head

    @property
    def stream_id(self) -> object:
        return getattr(self._stream, "stream_id", "?")

    @property
    def remote_finished(self) -> bool:
        return self._stream.remote_finished

    async def send_head(self, head: dict[str, Any], end_stream: bool = False) -> None:
        await self._stream.send_head(head, end_stream)
        self._count_status(head)

    async def send_response(self, head: dict[str, Any], body: bytes) -> bool:
        if not await self._stream.send_response(head, body):
            return False
        self._count_status(head)
        if body:
            self._metrics.bytes_sent.inc(len(body))
        return True

    def _count_status(self, head: Mapping[str, Any]) -> None:
        status = head.get("status")
        if isinstance(status, int):
            kind = status_class(status)
            child = self._metrics.requests_by_class.get(kind)
            if child is None:
                child = self._metrics.requests.labels(kind)
            child.inc()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self._metrics.bytes_sent.inc(len(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if data:
            self._metrics.bytes_received.inc(len(data))
        return data

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    def reset(self, code: ErrorCode) -> object:
        self._metrics.errors.labels(reset_kind(code)).inc()
        return self._stream.reset(code)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._metrics.streams_open.dec()
        await self._stream.aclose()


__all__ = [
    "CONTENT_TYPE",
    "ConnectionCounts",
    "ConnectorMetrics",
    "MeteredStream",
    "reset_kind",
    "status_class",
]
