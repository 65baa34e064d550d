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

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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


class CountedFamily(Collector):
    """A counter the request path increments as a plain number per label set, read at scrape
    time. prometheus-client's ``Counter`` takes a lock and checks its state on every ``inc``;
    the edge counts a few times per request on one thread, so the counts live in a dict."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}
        self._clock = clock
        if not labelnames:
            self.add(())

    def add(self, labels: tuple[str, ...], amount: float = 0) -> None:
        """Count ``amount`` for ``labels``, creating the series (at 0) if it is new."""
        if labels not in self.values:
            self.values[labels] = 0
            self._created[labels] = self._clock()
        self.values[labels] += amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value, created=self._created[labels])
        yield family


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = self._counted(
            "tunnelgate_edge_requests", "Public requests answered, by status class.",
            ("status_class",))
        self._bytes_received = self._counted(
            "tunnelgate_edge_bytes_received", "Request body bytes read from visitors.")
        self._bytes_sent = self._counted(
            "tunnelgate_edge_bytes_sent", "Response body bytes sent to visitors.")
        self._errors = self._counted(
            "tunnelgate_edge_errors", "Requests that failed, by where they failed.", ("kind",))
        self._decisions = self._counted(
            "tunnelgate_edge_auth_decisions", "Access decisions, by action and stable reason.",
            ("decision", "reason"))
        for label in ("2xx", "3xx", "4xx", "5xx"):
            self._requests.add((label,))
        for kind in ERROR_KINDS:
            self._errors.add((kind,))
        # The request path's own references to the plain numbers.
        self._request_counts = self._requests.values
        self._sent = self._bytes_sent.values
        self._received = self._bytes_received.values

    def _counted(self, name: str, documentation: str,
                 labelnames: tuple[str, ...] = ()) -> CountedFamily:
        family = CountedFamily(name, documentation, labelnames)
        self.registry.register(family)
        return family

    def observe_tunnels(self, connections: TunnelConnections) -> None:
        self.registry.register(_TunnelCollector(connections))

    def request_finished(self, status: int) -> None:
        """Count one answered request; status 0 means no response head was ever sent."""
        if status == 0:
            self.error("no_response")
            return
        label = (_STATUS_CLASSES.get(status) or (status_class(status),))
        try:
            self._request_counts[label] += 1
        except KeyError:
            self._requests.add(label, 1)

    def bytes_sent(self, count: int) -> None:
        self._sent[()] += count

    def bytes_received(self, count: int) -> None:
        self._received[()] += count

    def error(self, kind: str) -> None:
        self._errors.add((kind,), 1)

    def auth_decision(self, decision: str, reason: str) -> None:
        self._decisions.add((decision, reason), 1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


_STATUS_CLASSES = {status: (status_class(status),) for status in range(100, 600)}


__all__ = [
    "CONTENT_TYPE",
    "ERROR_KINDS",
    "CountedFamily",
    "EdgeMetrics",
    "TunnelConnections",
    "status_class",
]
