"""Fixtures for several edges on one real PostgreSQL, all on 127.0.0.1 with OS-chosen ports.

Edges run in the test's trio run (``serve_edge``) so a test can wait on their own signals: the
change listener's ``applied`` event, the registry's ``changed``, the store health's ``changed``.
The multi-process tests start the real commands through ``e2e.processes``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e.visitor import Response, fetch
from store_pg.database import throwaway_database

from connector.config import Credentials, RunSettings
from connector.ingress import IngressTable
from connector.supervisor import Supervisor
from edge.cluster import ClusterNode
from edge.config import load_edge_config
from edge.server import EdgeRuntime, serve_edge
from edge.store.postgres import PostgresStore

SIGNAL_TIMEOUT = 20.0


@dataclass
class Cluster:
    """One database and the secrets every edge of it shares."""

    url: str
    secret_file: Path
    admin_token: str
    folder: Path

    def edge_toml(self, name: str, state_dir: Path, *, forwarding: bool = True) -> str:
        cluster = (
            "[cluster]\n"
            + ('listen = "127.0.0.1:0"\n' if forwarding else "")
            + f'secret_file = "{self.secret_file}"\n'
            'heartbeat_interval = "250ms"\n'
            'expiry = "2s"\n'
        )
        return (
            f'[edge]\nid = "{name}"\nstate_dir = "{state_dir}"\n'
            '[listen]\npublic = "127.0.0.1:0"\ntunnel = "127.0.0.1:0"\n'
            'admin = "127.0.0.1:0"\nops = "127.0.0.1:0"\n'
            f'[store]\nurl = "{self.url}"\n{cluster}'
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(secrets.token_hex(32) + "\n")
    with throwaway_database() as url:
        with PostgresStore(url) as store:
            token = store.add_admin_token()
        yield Cluster(url, secret_file, token, tmp_path)


@dataclass
class ClusterEdgeUnderTest:
    name: str
    runtime: EdgeRuntime
    cancel_scope: trio.CancelScope
    stopped: trio.Event
    cluster: Cluster

    @property
    def node(self) -> ClusterNode:
        assert self.runtime.cluster is not None
        return self.runtime.cluster

    @property
    def public(self) -> str:
        return self.runtime.listeners["public"]

    @property
    def tunnel_url(self) -> str:
        return f"ws://{self.runtime.listeners['tunnel']}"

    async def admin(self, method: str, target: str, payload: Any = None) -> Response:
        body = None if payload is None else json.dumps(payload).encode()
        headers = [("authorization", f"Bearer {self.cluster.admin_token}")]
        if body is not None:
            headers.append(("content-type", "application/json"))
        return await fetch(self.runtime.listeners["admin"], "admin", target, method=method,
                           headers=headers, body=body)

    async def ops(self, target: str) -> Response:
        return await fetch(self.runtime.listeners["ops"], "ops", target)

    async def wait_until(self, condition: Callable[[], bool], what: str, *,
                         within: float = SIGNAL_TIMEOUT) -> None:
        """Until ``condition()`` holds, re-checked each time this edge applied changes."""
        listener = self.node.listener
        assert listener is not None
        with trio.move_on_after(within):
            while not condition():
                await listener.applied.wait()
            return
        pytest.fail(f"{self.name}: {what} did not happen within {within:g}s")

    async def wait_peers(self, tunnel_id: str, count: int) -> None:
        """Until this edge knows ``count`` other edges holding the tunnel."""
        membership = self.node.membership
        with trio.move_on_after(SIGNAL_TIMEOUT):
            while len(membership.holders(tunnel_id)) != count:
                await membership.refreshed.wait()
            return
        pytest.fail(f"{self.name} sees {len(membership.holders(tunnel_id))} peers holding "
                    f"{tunnel_id}, expected {count}")

    async def wait_connections(self, tunnel_id: str, count: int) -> None:
        registry = self.runtime.registry
        with trio.move_on_after(SIGNAL_TIMEOUT):
            while len(registry.connections(tunnel_id)) != count:
                await registry.changed.wait()
            return
        pytest.fail(f"{self.name} holds {len(registry.connections(tunnel_id))} connections")


ClusterEdgeFactory = Callable[..., Awaitable[ClusterEdgeUnderTest]]


@pytest.fixture
def cluster_edge(nursery: trio.Nursery, cluster: Cluster) -> ClusterEdgeFactory:
    async def start(name: str, *, forwarding: bool = True) -> ClusterEdgeUnderTest:
        folder = cluster.folder / name
        folder.mkdir()
        config_path = folder / "edge.toml"
        config_path.write_text(cluster.edge_toml(name, folder, forwarding=forwarding))
        config = load_edge_config(config_path)
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run(*, task_status: trio.TaskStatus[EdgeRuntime]) -> None:
            try:
                with scope:
                    await serve_edge(config, task_status=task_status)
            finally:
                stopped.set()

        runtime = await nursery.start(run)
        return ClusterEdgeUnderTest(name, runtime, scope, stopped, cluster)

    return start


async def create_tunnel(edge: ClusterEdgeUnderTest, name: str, hostname: str) -> Credentials:
    """Through the edge's admin API, as an administrator would."""
    created = await edge.admin("POST", "/v1/tunnels", {"name": name})
    assert created.status == 201, created.text
    tunnel = created.json()
    routed = await edge.admin("POST", f"/v1/tunnels/{tunnel['id']}/routes", {"hostname": hostname})
    assert routed.status == 201, routed.text
    return Credentials(tunnel["id"], name, tunnel["credentials"]["tunnel_secret"])


async def start_connector(nursery: trio.Nursery, credentials: Credentials, service: str,
                          *edges: ClusterEdgeUnderTest, ha_connections: int = 2) -> Supervisor:
    """An in-process connector spreading its connections over ``edges``; returns once every
    connection registered."""
    settings = RunSettings(
        credentials=credentials,
        edges=tuple(edge.tunnel_url for edge in edges),
        ingress=IngressTable.single(service),
        ha_connections=ha_connections,
        grace_period=5.0,
    )
    supervisor = Supervisor(settings)
    await nursery.start(supervisor.run)
    for index, edge in enumerate(edges):
        expected = len(range(index, ha_connections, len(edges)))
        await edge.wait_connections(credentials.tunnel_id, expected)
    return supervisor
