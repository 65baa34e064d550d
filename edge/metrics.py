"""The edge's Prometheus metrics, served on the ops listener's ``/metrics`` (never the public one).

Each edge owns its own ``CollectorRegistry`` (several edges can live in one test process without
mixing their numbers). Two kinds of series:

    counted     the request path increments them as things happen: requests by status class,
                body bytes in and out, errors by kind, Access decisions by reason
    observed    read from the tunnel registry at scrape time, so they can never drift from
                the truth: HA connections per tunnel, open streams, registrations so far

All names start with ``tunnelgate_edge_``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
ERROR_KINDS = (
    "tunnel_offline",
    "tunnel_connection_lost",
    "origin_unreachable",
    "origin_timeout",
    "no_ingress",
    "access_denied_by_connector",
    "stream_reset",
    "response_aborted",
    "no_response",
)


class _Session(Protocol):
    @property
    def open_streams(self) -> int: ...


class _Connection(Protocol):
    tunnel_id: str

    @property
    def session(self) -> _Session: ...


class TunnelConnections(Protocol):
    """What the metrics read from ``edge.tunnels.TunnelRegistry``."""

    registrations: int

    def all(self) -> Iterable[_Connection]: ...


def status_class(status: int) -> str:
    """``"2xx"`` for 200-299 and so on; anything outside 100-599 is ``"other"``."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class _TunnelCollector(Collector):
    def __init__(self, connections: TunnelConnections) -> None:
        self._connections = connections

    def collect(self) -> Iterator[Metric]:
        per_tunnel: dict[str, int] = {}
        open_streams = 0
        for conn in self._connections.all():
            per_tunnel[conn.tunnel_id] = per_tunnel.get(conn.tunnel_id, 0) + 1
            open_streams += conn.session.open_streams
        ha = GaugeMetricFamily("tunnelgate_edge_ha_connections",
                               "Registered tunnel connections held by this edge, per tunnel.",
                               labels=["tunnel"])
        for tunnel_id, count in sorted(per_tunnel.items()):
            ha.add_metric([tunnel_id], count)
        yield ha
        yield GaugeMetricFamily("tunnelgate_edge_tunnel_connections",
                                "Registered tunnel connections held by this edge, all tunnels.",
                                value=sum(per_tunnel.values()))
        yield GaugeMetricFamily("tunnelgate_edge_streams_open",
                                "Tunnel streams (proxied requests) open right now.",
                                value=open_streams)
        yield CounterMetricFamily("tunnelgate_edge_tunnel_registrations",
                                  "Tunnel connections registered since start (a connector's "
                                  "reconnect counts again).",
                                  value=self._connections.registrations)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunnelgate_edge_requests", "Public requests answered, by status class.",
            ["status_class"], registry=self.registry)
        self.bytes_received = Counter(
            "tunnelgate_edge_bytes_received", "Request body bytes read from visitors.",
            registry=self.registry)
        self.bytes_sent = Counter(
            "tunnelgate_edge_bytes_sent", "Response body bytes sent to visitors.",
            registry=self.registry)
        self.errors = Counter(
            "tunnelgate_edge_errors", "Requests that failed, by where they failed.",
            ["kind"], registry=self.registry)
        self.auth_decisions = Counter(
            "tunnelgate_edge_auth_decisions", "Access decisions, by action and stable reason.",
            ["decision", "reason"], registry=self.registry)
        # labels() costs a lock and a tuple lookup per call; the request path asks for the same
        # few children every time, so they are looked up once.
        self._requests_by_class = {
            status: self.requests.labels(status) for status in ("2xx", "3xx", "4xx", "5xx")
        }
        self._errors_by_kind = {kind: self.errors.labels(kind) for kind in ERROR_KINDS}
        self._decisions: dict[tuple[str, str], Counter] = {}

    def observe_tunnels(self, connections: TunnelConnections) -> None:
        self.registry.register(_TunnelCollector(connections))

    def request_finished(self, status: int) -> None:
        """Count one answered request; status 0 means no response head was ever sent."""
        if status == 0:
            self.error("no_response")
            return
        label = status_class(status)
        child = self._requests_by_class.get(label)
        if child is None:
            child = self._requests_by_class[label] = self.requests.labels(label)
        child.inc()

    def error(self, kind: str) -> None:
        child = self._errors_by_kind.get(kind)
        if child is None:
            child = self._errors_by_kind[kind] = self.errors.labels(kind)
        child.inc()

    def auth_decision(self, decision: str, reason: str) -> None:
        key = (decision, reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.auth_decisions.labels(decision, reason)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ERROR_KINDS", "EdgeMetrics", "TunnelConnections", "status_class"]
