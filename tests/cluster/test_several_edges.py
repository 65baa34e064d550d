"""Three edge processes and two connector processes on one real PostgreSQL, through the real
commands: ``tunnelgate-edge init --store ... --edge-id``, ``serve``, ``status`` and
``tunnelgate tunnel run --edge A --edge B``.

Traffic sent to any edge reaches the tunnel (the edge without a connection forwards it), and
when one edge is killed under steady load, only requests in flight on that edge fail; the other
edges keep answering every new request."""

from __future__ import annotations

import json
import logging
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from e2e.origin import Origin, serve
from e2e.processes import CONNECTOR_BIN, EDGE_BIN, ChildProcess, child_process, run_command
from e2e.visitor import fetch
from store_pg.database import throwaway_database

from connector.config import Credentials, write_credentials

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

HOST = "app.several.test"
HANG_GUARD = 30.0


async def init_edge(folder: Path, name: str, url: str, secret_from: Path | None) -> Path:
    """``init`` one edge of the cluster; the first one's cluster secret is copied to the rest
    (before their init, which keeps a secret it finds)."""
    await trio.Path(folder).mkdir()
    if secret_from is not None:
        await trio.to_thread.run_sync(
            shutil.copy, secret_from / "cluster.secret", folder / "cluster.secret")
    await run_command(
        [EDGE_BIN, "init", "--dir", str(folder), "--store", url, "--edge-id", name,
         "--public-listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
         "--cluster-listen", "127.0.0.1:0"],
        name=f"init-{name}", log_dir=folder)
    config = trio.Path(folder / "edge.toml")
    text = await config.read_text()
    assert f'url = "{url}"' in text
    assert f'id = "{name}"' in text
    # Quicker heartbeats than the production defaults, so a killed edge expires within the test.
    await config.write_text(
        text.replace('heartbeat_interval = "2s"', 'heartbeat_interval = "250ms"')
        .replace('expiry = "10s"', 'expiry = "2s"'))
    return Path(config)


@dataclass
class Load:
    """Requests sent one after another to one edge: when each started, how it ended."""

    edge: str
    results: list[tuple[float, float, int | str]] = field(default_factory=list)
    stop: trio.Event = field(default_factory=trio.Event)
    progressed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) after each request."""

    async def run(self, address: str) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            started = trio.current_time()
            try:
                answer = await fetch(address, HOST, f"/item/{number}",
                                     headers=[("accept", "application/json")])
                outcome: int | str = answer.status
                if answer.status == 200:
                    assert answer.text == f"item {number}"
                elif answer.status == 502:
                    outcome = f"502 {answer.json()['error']}"
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                outcome = type(exc).__name__
            self.results.append((started, trio.current_time(), outcome))
            self.progressed.set()
            self.progressed = trio.Event()

    async def wait_results(self, count: int, *, after: float = 0.0) -> None:
        with trio.fail_after(HANG_GUARD):
            while sum(1 for started, _, _ in self.results if started > after) < count:
                await self.progressed.wait()


async def cluster_connections(edge: ChildProcess, token: str, tunnel_id: str) -> dict[str, int]:
    answer = await fetch(edge.ready["listeners"]["admin"], "admin", f"/v1/tunnels/{tunnel_id}",
                         headers=[("authorization", f"Bearer {token}")])
    per_edge: dict[str, int] = {}
    for conn in answer.json()["connections"]:
        per_edge[conn["edge_id"]] = per_edge.get(conn["edge_id"], 0) + 1
    return per_edge


def sees(tunnel_id: str, held: str) -> Any:
    """A test of an edge's log line for its view of the other edges' connections to
    ``tunnel_id`` (``edge.cluster``: ``peers=<tunnel>:<edge>=<n>,...``), exactly ``held``."""
    wanted = f"{tunnel_id}:{held}"

    def matches(line: str) -> bool:
        if "cluster view changed" not in line:
            return False
        peers = line.split("peers=", 1)[1].strip().strip('"').split(";")
        return wanted in peers

    return matches


async def test_three_edges_two_connectors_survive_losing_an_edge(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin("several")
    origin_address = await nursery.start(serve, origin, "127.0.0.1", 0)
    with throwaway_database(migrated=False) as url:
        folders = [tmp_path / f"edge-{n}" for n in (1, 2, 3)]
        configs = [await init_edge(folders[0], "edge-1", url, None)]
        for n in (2, 3):
            configs.append(await init_edge(folders[n - 1], f"edge-{n}", url, folders[0]))
        token = (folders[0] / "admin.token").read_text().strip()

        async with (
            child_process([EDGE_BIN, "serve", "--config", str(configs[0])], name="edge-1",
                          log_dir=tmp_path) as edge_1,
            child_process([EDGE_BIN, "serve", "--config", str(configs[1])], name="edge-2",
                          log_dir=tmp_path) as edge_2,
            child_process([EDGE_BIN, "serve", "--config", str(configs[2])], name="edge-3",
                          log_dir=tmp_path, watch_log_in=nursery) as edge_3,
        ):
            edges = {"edge-1": edge_1, "edge-2": edge_2, "edge-3": edge_3}
            admin = edge_1.ready["listeners"]["admin"]
            auth = [("authorization", f"Bearer {token}"), ("content-type", "application/json")]
            created = await fetch(admin, "admin", "/v1/tunnels", method="POST", headers=auth,
                                  body=json.dumps({"name": "several"}).encode())
            assert created.status == 201, created.text
            tunnel = created.json()
            routed = await fetch(admin, "admin", f"/v1/tunnels/{tunnel['id']}/routes",
                                 method="POST", headers=auth,
                                 body=json.dumps({"hostname": HOST}).encode())
            assert routed.status == 201, routed.text
            credentials_file = tmp_path / "several.json"
            write_credentials(credentials_file, Credentials(
                tunnel["id"], "several", tunnel["credentials"]["tunnel_secret"]))

            # Both connectors spread over edge-1 and edge-2; edge-3 holds no connection.
            edge_args = [arg for e in (edge_1, edge_2)
                         for arg in ("--edge", f"ws://{e.ready['listeners']['tunnel']}")]
            run = [CONNECTOR_BIN, "tunnel", "run", "--credentials-file", str(credentials_file),
                   "--url", f"http://{origin_address}", "--ha-connections", "2", *edge_args]
            async with (
                child_process(run, name="connector-1", log_dir=tmp_path),
                child_process(run, name="connector-2", log_dir=tmp_path),
            ):

                # edge-3 logs each change of its view of the other edges' connections.
                await edge_3.wait_for_log(sees(tunnel["id"], "edge-1=2,edge-2=2"),
                                          "four connections seen from edge-3",
                                          within=HANG_GUARD)
                assert await cluster_connections(edge_3, token, tunnel["id"]) == {
                    "edge-1": 2, "edge-2": 2}
                for name, edge in edges.items():
                    for number in range(10):
                        answer = await fetch(edge.ready["listeners"]["public"], HOST,
                                             f"/item/{name}-{number}")
                        assert answer.status == 200, f"{name}: {answer.text}"
                        assert answer.text == f"item {name}-{number}"

                status = await run_command(
                    [EDGE_BIN, "status", "--config", str(configs[2]), "--json"],
                    name="status", log_dir=tmp_path)
                report = json.loads(status.stdout)
                assert report["store"]["reachable"] is True
                assert [e["edge_id"] for e in report["edges"]] == ["edge-1", "edge-2", "edge-3"]
                (listed,) = report["tunnels"]
                assert listed["connections"] == {"edge-1": 2, "edge-2": 2}
                text = await run_command([EDGE_BIN, "status", "--config", str(configs[2])],
                                         name="status-text", log_dir=tmp_path)
                assert b"edge-1: 2, edge-2: 2" in text.stdout

                loads = {name: Load(name) for name in edges}
                async with trio.open_nursery() as traffic:
                    for name, load in loads.items():
                        traffic.start_soon(load.run, edges[name].ready["listeners"]["public"])
                    for load in loads.values():
                        await load.wait_results(20)
                    loads["edge-1"].stop.set()
                    edge_1.process.send_signal(signal.SIGKILL)
                    await edge_1.wait_exit(HANG_GUARD)
                    killed_at = trio.current_time()
                    for name in ("edge-2", "edge-3"):
                        await loads[name].wait_results(50, after=killed_at)
                    loads["edge-2"].stop.set()
                    loads["edge-3"].stop.set()

                for name, load in loads.items():
                    log.info("load on %s: %d requests, %d started after the kill, failures %s",
                             name, len(load.results),
                             sum(1 for r in load.results if r[0] > killed_at),
                             [r[2] for r in load.results if r[2] != 200])
                for name in ("edge-2", "edge-3"):
                    results = loads[name].results
                    after = [outcome for started, _, outcome in results if started > killed_at]
                    assert after, name
                    assert all(outcome == 200 for outcome in after), (name, after)
                    failed = [(s, e, o) for s, e, o in results if o != 200]
                    # Only requests in flight when edge-1 died may fail, and with a clean page.
                    assert all(s <= killed_at <= e and o == "502 tunnel_offline"
                               for s, e, o in failed), (name, failed)

                # edge-1's rows expire; the connectors re-dial its connections elsewhere.
                await edge_3.wait_for_log(sees(tunnel["id"], "edge-2=4"),
                                          "edge-1's connections moving to edge-2",
                                          within=HANG_GUARD)
                assert await cluster_connections(edge_3, token, tunnel["id"]) == {"edge-2": 4}
                for name in ("edge-2", "edge-3"):
                    answer = await fetch(edges[name].ready["listeners"]["public"], HOST, "/item/x")
                    assert answer.status == 200
