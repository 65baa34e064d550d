"""PostgreSQL goes away under a running edge: it keeps serving from memory, says so on /ready
and in metrics, refuses writes with a clear 503, loses no acknowledged write, and reconnects.

The outage is made without touching the shared server: the test's own database stops
accepting connections and its backends are terminated."""

from __future__ import annotations

import urllib.parse

import psycopg
import pytest
import trio
from e2e.origin import Origin, serve
from e2e.visitor import fetch
from store_pg.database import server_url, terminate_backends

from .conftest import ClusterEdgeFactory, ClusterEdgeUnderTest, create_tunnel, start_connector

HOST = "steady.cluster.test"
HANG_GUARD = 20.0


def allow_connections(url: str, allowed: bool) -> None:
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')


async def wait_health(edge: ClusterEdgeUnderTest, ok: bool) -> None:
    health = edge.node.health
    with trio.move_on_after(HANG_GUARD):
        while health.ok != ok:
            await health.changed.wait()
        return
    pytest.fail(f"store health stayed {health.ok}, expected {ok}")


async def test_an_outage_keeps_serving_refuses_writes_and_loses_nothing_acknowledged(
    cluster_edge: ClusterEdgeFactory, nursery: trio.Nursery
) -> None:
    origin = Origin("steady")
    address = await nursery.start(serve, origin, "127.0.0.1", 0)
    edge = await cluster_edge("edge-a")
    credentials = await create_tunnel(edge, "steady", HOST)
    await start_connector(nursery, credentials, f"http://{address}", edge)
    assert (await fetch(edge.public, HOST, "/item/1")).status == 200

    acknowledged: list[str] = []
    refused: list[int] = []

    async def write(name: str) -> None:
        answer = await edge.admin("POST", "/v1/tunnels", {"name": name})
        if answer.status == 201:
            acknowledged.append(answer.json()["id"])
        else:
            assert answer.status == 503, answer.text
            assert answer.json()["error"] == "store_unavailable"
            refused.append(answer.status)

    await write("before")
    allow_connections(edge.cluster.url, False)
    try:
        assert terminate_backends(edge.cluster.url) >= 2  # the store's and the listener's
        await wait_health(edge, ok=False)
        for number in range(10):
            await write(f"during-{number}")
            served = await fetch(edge.public, HOST, f"/item/{number}")
            assert (served.status, served.text) == (200, f"item {number}")
        ready = await edge.ops("/ready")
        assert ready.status == 200
        assert ready.json()["store"]["status"] == "unavailable"
        assert ready.json()["store"]["serving_from"] == "memory"
        metrics = (await edge.ops("/metrics")).text
        assert "tunnelgate_edge_store_up 0.0" in metrics
        assert refused, "a write during the outage was acknowledged"
    finally:
        allow_connections(edge.cluster.url, True)
    await wait_health(edge, ok=True)
    await write("after")
    assert (await edge.ops("/ready")).json()["store"]["status"] == "ok"
    assert "tunnelgate_edge_store_up 1.0" in (await edge.ops("/metrics")).text

    listed = (await edge.admin("GET", "/v1/tunnels")).json()["tunnels"]
    stored = {tunnel["id"] for tunnel in listed}
    assert set(acknowledged) <= stored
    assert {tunnel["name"] for tunnel in listed} == {"steady", "before", "after"} | {
        tunnel["name"] for tunnel in listed if tunnel["id"] in acknowledged
    }
    assert (await fetch(edge.public, HOST, "/item/after")).status == 200
