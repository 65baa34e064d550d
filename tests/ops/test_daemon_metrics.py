"""Metrics scraped over HTTP from the real daemons after known traffic, parsed with
prometheus-client's own parser."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from .daemons import connector_command, daemon, edge_command, prepare_edge
from .web import Origin, request, serve_origin


def scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def metrics_of(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await request(address, address, "/metrics")
    assert response.status == 200
    return scrape(response.body)


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def test_metrics_after_known_traffic(tmp_path: Path, nursery: trio.Nursery) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with daemon(
            connector_command(credentials, tunnel_url, "--url", origin_url,
                              "--metrics", "127.0.0.1:0", "--ha-connections", "2"),
            name="connector", log_dir=tmp_path,
        ) as connector:
            connector_ops = (await connector.next_event("metrics"))["address"]
            await connector.next_event("ready")
            public, edge_ops = listeners["public"], listeners["ops"]

            proxied = []
            for index in range(3):
                response = await request(public, "app.example.test", f"/item/{index}")
                assert response.status == 200
                proxied.append(response)
            upload = await request(public, "app.example.test", "/upload", method="POST",
                                   body=b"u" * 5000)
            assert upload.json()["bytes"] == 5000
            proxied.append(upload)
            unknown = await request(public, "nobody.example.test", "/")
            assert unknown.status == 404

            edge_metrics = await metrics_of(edge_ops)
            assert edge_metrics[key("tunnelgate_edge_requests_total", status_class="2xx")] == 4
            assert edge_metrics[key("tunnelgate_edge_requests_total", status_class="4xx")] == 1
            assert edge_metrics[key("tunnelgate_edge_requests_total", status_class="5xx")] == 0
            assert edge_metrics[key("tunnelgate_edge_bytes_received_total")] == 5000
            assert edge_metrics[key("tunnelgate_edge_bytes_sent_total")] == sum(
                len(response.body) for response in proxied)
            assert edge_metrics[key("tunnelgate_edge_ha_connections",
                                    tunnel=setup.tunnel_id)] >= 1
            assert edge_metrics[key("tunnelgate_edge_tunnel_registrations_total")] >= 1
            assert edge_metrics[key("tunnelgate_edge_streams_open")] == 0

            connector_metrics = await metrics_of(connector_ops)
            assert connector_metrics[key("tunnelgate_connector_requests_total",
                                         status_class="2xx")] == 4
            assert connector_metrics[key("tunnelgate_connector_streams_total")] == 4
            assert connector_metrics[key("tunnelgate_connector_bytes_received_total")] == 5000
            assert connector_metrics[key("tunnelgate_connector_ha_connections")] == 2
            assert connector_metrics[key("tunnelgate_connector_reconnects_total")] == 0
            assert connector_metrics[key("tunnelgate_connector_errors_total",
                                         kind="connect_failed")] == 0
            assert origin.requests == 4


async def test_metrics_are_not_on_the_public_listener(tmp_path: Path) -> None:
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        for path in ("/metrics", "/ready", "/healthz"):
            response = await request(listeners["public"], "app.example.test", path)
            assert b"tunnelgate_" not in response.body
            assert response.status == 502  # the route's tunnel is offline: proxied, not served
        ops = await request(listeners["ops"], listeners["ops"], "/ready")
        assert (ops.status, ops.json()["status"]) == (200, "ready")
