"""Changes made on one edge reach the others through LISTEN/NOTIFY, and a request for a tunnel
held elsewhere is forwarded over the authenticated internal hop."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from e2e.origin import Origin, serve
from e2e.visitor import fetch, fetch_json_error

from .conftest import ClusterEdgeFactory, create_tunnel, start_connector

log = logging.getLogger(__name__)

PROPAGATION_BOUND = 2.0
"""What the cluster promises for a change to reach every edge."""
HANG_GUARD = 20.0
HOST = "app.cluster.test"


@pytest.fixture
async def origin(nursery: trio.Nursery) -> tuple[Origin, str]:
    app = Origin("cluster-origin")
    address = await nursery.start(serve, app, "127.0.0.1", 0)
    return app, f"http://{address}"


async def test_a_route_added_on_one_edge_serves_on_another_within_two_seconds(
    cluster_edge: ClusterEdgeFactory, origin: tuple[Origin, str], nursery: trio.Nursery
) -> None:
    edge_a = await cluster_edge("edge-a")
    edge_b = await cluster_edge("edge-b")
    created = await edge_a.admin("POST", "/v1/tunnels", {"name": "home"})
    assert created.status == 201, created.text
    tunnel = created.json()
    # The tunnel's credential reaches B by notification, so a connector can register there.
    await edge_b.wait_until(lambda: tunnel["id"] in edge_b.runtime.state.credentials,
                            "the new tunnel's credential", within=PROPAGATION_BOUND)
    from connector.config import Credentials

    credentials = Credentials(tunnel["id"], "home", tunnel["credentials"]["tunnel_secret"])
    await start_connector(nursery, credentials, origin[1], edge_b)
    unrouted = await fetch_json_error(edge_b.public, HOST)
    assert unrouted.status == 404

    written_at = time.monotonic()
    routed = await edge_a.admin("POST", f"/v1/tunnels/{tunnel['id']}/routes", {"hostname": HOST})
    assert routed.status == 201, routed.text
    await edge_b.wait_until(lambda: edge_b.runtime.state.routes.lookup(HOST) is not None,
                            "the new route", within=PROPAGATION_BOUND)
    delay = time.monotonic() - written_at
    log.info("route propagated from edge-a to edge-b in %.1f ms", delay * 1000)
    answer = await fetch(edge_b.public, HOST, "/hello")
    assert answer.status == 200, answer.text
    assert answer.json()["tag"] == "cluster-origin"

    # Deleting the tunnel on A ends its connections on B for good.
    deleted = await edge_a.admin("DELETE", f"/v1/tunnels/{tunnel['id']}?force=true")
    assert deleted.status == 204, deleted.text
    await edge_b.wait_connections(tunnel["id"], 0)
    assert edge_b.runtime.state.routes.lookup(HOST) is None
    assert (await fetch_json_error(edge_b.public, HOST)).status == 404


async def test_a_request_reaching_an_edge_without_the_tunnel_is_forwarded(
    cluster_edge: ClusterEdgeFactory, origin: tuple[Origin, str], nursery: trio.Nursery
) -> None:
    edge_a = await cluster_edge("edge-a")
    edge_b = await cluster_edge("edge-b")
    credentials = await create_tunnel(edge_a, "home", HOST)
    await edge_b.wait_until(lambda: edge_b.runtime.state.routes.lookup(HOST) is not None,
                            "the route")
    offline = await fetch_json_error(edge_b.public, HOST)
    assert offline.status == 502
    assert offline.json()["error"] == "tunnel_offline"

    await start_connector(nursery, credentials, origin[1], edge_a)
    await edge_b.wait_peers(credentials.tunnel_id, 1)
    assert edge_b.runtime.registry.connections(credentials.tunnel_id) == []
    for number in range(5):
        answer = await fetch(edge_b.public, HOST, f"/item/{number}")
        assert (answer.status, answer.text) == (200, f"item {number}")
    upload = b"x" * 300_000
    echoed = await fetch(edge_b.public, HOST, "/sha256", method="POST", body=upload)
    assert echoed.status == 200
    assert echoed.json()["bytes"] == len(upload)
    assert edge_b.node.hop_client is not None
    assert edge_b.node.hop_client.forwarded == 6
    assert edge_b.node.hop_client.connections_opened == 1  # kept alive between requests

    # The admin API of either edge lists the connections of the whole cluster.
    listing = (await edge_b.admin("GET", f"/v1/tunnels/{credentials.tunnel_id}")).json()
    assert {c["edge_id"] for c in listing["connections"]} == {"edge-a"}


async def test_a_service_token_revoked_on_one_edge_is_refused_on_another(
    cluster_edge: ClusterEdgeFactory, origin: tuple[Origin, str], nursery: trio.Nursery
) -> None:
    edge_a = await cluster_edge("edge-a")
    edge_c = await cluster_edge("edge-c")
    credentials = await create_tunnel(edge_a, "home", HOST)
    token = await edge_a.admin("POST", "/v1/service-tokens", {"name": "ci", "duration": "1h"})
    assert token.status == 201, token.text
    app = await edge_a.admin("POST", "/v1/apps", {
        "name": "api", "domain": HOST,
        "policies": [{"name": "ci", "action": "service_auth",
                      "include": [{"service_token": "ci"}]}],
    })
    assert app.status == 201, app.text
    await edge_c.wait_until(lambda: credentials.tunnel_id in edge_c.runtime.state.credentials,
                            "the tunnel's credential")
    await start_connector(nursery, credentials, origin[1], edge_c)
    await edge_c.wait_until(
        lambda: edge_c.runtime.access is not None
        and any(a.name == "api" for a in edge_c.runtime.access.catalog.apps),
        "the application",
    )
    token_headers = [("cf-access-client-id", token.json()["client_id"]),
                     ("cf-access-client-secret", token.json()["client_secret"]),
                     ("accept", "application/json")]
    allowed = await fetch(edge_c.public, HOST, "/hello", headers=token_headers)
    assert allowed.status == 200, allowed.text
    assert (await fetch_json_error(edge_c.public, HOST, "/hello")).status in (401, 403)

    applied = edge_c.node.listener
    assert applied is not None
    revoked_at = time.monotonic()
    deleted = await edge_a.admin("DELETE", "/v1/service-tokens/ci")
    assert deleted.status == 204, deleted.text
    await edge_c.wait_until(
        lambda: applied.last_applied is not None
        and any(e.kind == "service_token_changed" for e in applied.last_applied[1]),
        "the revocation", within=PROPAGATION_BOUND,
    )
    log.info("service token revocation reached edge-c in %.1f ms",
             (time.monotonic() - revoked_at) * 1000)
    refused = await fetch(edge_c.public, HOST, "/hello", headers=token_headers)
    assert refused.status in (401, 403), refused.text
