"""Metric definitions and counting, and the connector's ops listener over a real socket."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from connector.metrics import ConnectorMetrics
from connector.ops import OpsEndpoints, listener_address, open_ops_listener, serve_ops
from edge.metrics import EdgeMetrics, status_class
from tunnel.protocol import ErrorCode

from .web import request


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, parsed by prometheus-client's parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(exposition: bytes, name: str, **labels: str) -> float:
    return samples(exposition)[(name, tuple(sorted(labels.items())))]


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 502, 99, 600)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "other", "other"]


@dataclass
class FakeSession:
    open_streams: int


@dataclass
class FakeConnection:
    tunnel_id: str
    session: FakeSession


@dataclass
class FakeRegistry:
    connections: list[FakeConnection] = field(default_factory=list)
    registrations: int = 0

    def all(self) -> list[FakeConnection]:
        return self.connections


def test_edge_metrics_count_requests_and_read_the_registry_at_scrape_time() -> None:
    metrics = EdgeMetrics()
    registry = FakeRegistry()
    metrics.observe_tunnels(registry)
    for status in (200, 204, 404, 502, 0):
        metrics.request_finished(status)
    metrics.error("origin_timeout")
    metrics.auth_decision("deny", "no_policy_matched")
    registry.connections = [FakeConnection("t1", FakeSession(2)), FakeConnection("t1",
                            FakeSession(1)), FakeConnection("t2", FakeSession(0))]
    registry.registrations = 5
    text = metrics.exposition()
    assert value(text, "tunnelgate_edge_requests_total", status_class="2xx") == 2
    assert value(text, "tunnelgate_edge_requests_total", status_class="4xx") == 1
    assert value(text, "tunnelgate_edge_requests_total", status_class="5xx") == 1
    assert value(text, "tunnelgate_edge_errors_total", kind="no_response") == 1
    assert value(text, "tunnelgate_edge_errors_total", kind="origin_timeout") == 1
    assert value(text, "tunnelgate_edge_auth_decisions_total", decision="deny",
                 reason="no_policy_matched") == 1
    assert value(text, "tunnelgate_edge_ha_connections", tunnel="t1") == 2
    assert value(text, "tunnelgate_edge_ha_connections", tunnel="t2") == 1
    assert value(text, "tunnelgate_edge_streams_open") == 3
    assert value(text, "tunnelgate_edge_tunnel_registrations_total") == 5
    registry.connections = []
    assert (("tunnelgate_edge_ha_connections", (("tunnel", "t1"),))
            not in samples(metrics.exposition()))


def test_edge_counters_count_bytes_and_keep_prometheus_counter_samples() -> None:
    metrics = EdgeMetrics()
    metrics.bytes_sent(100)
    metrics.bytes_sent(23)
    metrics.bytes_received(7)
    metrics.request_finished(299)
    metrics.request_finished(600)
    text = metrics.exposition()
    assert value(text, "tunnelgate_edge_bytes_sent_total") == 123
    assert value(text, "tunnelgate_edge_bytes_received_total") == 7
    assert value(text, "tunnelgate_edge_requests_total", status_class="2xx") == 1
    assert value(text, "tunnelgate_edge_requests_total", status_class="other") == 1
    assert value(text, "tunnelgate_edge_requests_total", status_class="3xx") == 0
    # Like prometheus-client's own Counter: a _created sample beside every _total.
    found = samples(text)
    assert ("tunnelgate_edge_bytes_sent_created", ()) in found
    assert ("tunnelgate_edge_requests_created", (("status_class", "other"),)) in found


def test_every_metric_name_starts_with_tunnelgate() -> None:
    edge = EdgeMetrics()
    edge.observe_tunnels(FakeRegistry())
    connector = ConnectorMetrics()
    connector.observe_state(FakeState())
    for exposition in (edge.exposition(), connector.exposition()):
        names = {family.name for family in text_string_to_metric_families(exposition.decode())}
        assert names
        assert all(name.startswith("tunnelgate_") for name in names), names


@dataclass
class FakeState:
    registered: int = 0
    reconnects: int = 0
    draining: bool = False

    @property
    def ready_connections(self) -> int:
        return self.registered


class FakeStream:
    def __init__(self, inbound: list[bytes]) -> None:
        self._inbound = inbound
        self.sent: list[Any] = []
        self.closed = False

    @property
    def head(self) -> Mapping[str, Any]:
        return {"kind": "http", "host": "app.test"}

    @property
    def remote_finished(self) -> bool:
        return not self._inbound

    async def send_head(self, head: dict[str, Any], end_stream: bool = False) -> None:
        self.sent.append(head)

    async def send_response(self, head: dict[str, Any], body: bytes) -> bool:
        self.sent.extend([head, body, "eof"])
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return self._inbound.pop(0) if self._inbound else b""

    async def send_eof(self) -> None:
        self.sent.append("eof")

    async def aclose(self) -> None:
        self.closed = True

    def reset(self, code: ErrorCode) -> object:
        self.sent.append(code)
        return None


async def test_metered_stream_counts_status_bytes_streams_and_resets() -> None:
    metrics = ConnectorMetrics()
    inner = FakeStream([b"abc", b"defg"])
    stream = metrics.metered(inner)
    assert value(metrics.exposition(), "tunnelgate_connector_streams_open") == 1
    assert await stream.receive_some() == b"abc"
    assert await stream.receive_some() == b"defg"
    assert await stream.receive_some() == b""
    await stream.send_head({"status": 201, "headers": []})
    await stream.send_all(b"x" * 10)
    await stream.send_eof()
    await stream.aclose()
    await stream.aclose()
    other = metrics.metered(FakeStream([]))
    other.reset(ErrorCode.ORIGIN_UNREACHABLE)
    await other.aclose()
    text = metrics.exposition()
    assert inner.sent == [{"status": 201, "headers": []}, b"x" * 10, "eof"]
    assert inner.closed
    assert value(text, "tunnelgate_connector_requests_total", status_class="2xx") == 1
    assert value(text, "tunnelgate_connector_bytes_received_total") == 7
    assert value(text, "tunnelgate_connector_bytes_sent_total") == 10
    assert value(text, "tunnelgate_connector_streams_total") == 2
    assert value(text, "tunnelgate_connector_streams_open") == 0
    assert value(text, "tunnelgate_connector_errors_total", kind="origin_unreachable") == 1


async def test_connector_ops_listener_serves_ready_healthz_and_metrics(
    nursery: trio.Nursery,
) -> None:
    state = FakeState()
    metrics = ConnectorMetrics()
    metrics.observe_state(state)
    listener = await open_ops_listener("127.0.0.1:0")
    address = listener_address(listener)
    nursery.start_soon(serve_ops, listener, OpsEndpoints(state, metrics, "conn-1"))

    not_ready = await request(address, address, "/ready")
    assert not_ready.status == 503
    assert not_ready.json() == {"status": 503, "readyConnections": 0, "connectorId": "conn-1"}

    state.registered, state.reconnects = 2, 4
    ready = await request(address, address, "/ready")
    assert ready.status == 200
    assert ready.json()["readyConnections"] == 2

    state.draining = True
    assert (await request(address, address, "/ready")).status == 503

    health = await request(address, address, "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})

    scraped = await request(address, address, "/metrics")
    assert scraped.status == 200
    assert dict(scraped.headers)["content-type"].startswith("text/plain")
    assert value(scraped.body, "tunnelgate_connector_ha_connections") == 2
    assert value(scraped.body, "tunnelgate_connector_reconnects_total") == 4

    missing = await request(address, address, "/admin")
    assert missing.status == 404
    assert "/metrics" in json.loads(missing.body)["message"]
    posted = await request(address, address, "/metrics", method="POST", body=b"x")
    assert posted.status == 405
