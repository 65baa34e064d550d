"""The service owner's journey with the real commands, as the README tells it: init and serve
an edge, create and route a tunnel through the admin API, run the connector with `--url`, and
a request to the public hostname reaches the private origin."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import trio

from .origin import Origin
from .processes import CONNECTOR_BIN, EDGE_BIN, child_process, run_command
from .visitor import fetch, fetch_json_error

pytestmark = pytest.mark.e2e

HANG_GUARD = 60.0
HOST = "web.example.test"


async def test_cli_create_route_run_then_a_request_reaches_the_origin(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    app, origin_url = origin
    env = {"HOME": str(tmp_path / "home")}  # nothing read from or written to the real home
    edge_dir = tmp_path / "edge"
    with trio.fail_after(HANG_GUARD):
        await run_command(
            [EDGE_BIN, "init", "--dir", str(edge_dir), "--public-listen", "127.0.0.1:0",
             "--tunnel-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--ops-listen", "127.0.0.1:0"],
            name="edge-init", log_dir=tmp_path, env=env)
        token_file = edge_dir / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        async with child_process([EDGE_BIN, "serve", "--config", str(edge_dir / "edge.toml")],
                                 name="edge", log_dir=tmp_path, env=env) as edge:
            listeners = edge.ready["listeners"]
            api = [CONNECTOR_BIN, "--api", f"http://{listeners['admin']}",
                   "--api-token-file", str(token_file)]
            credentials_file = tmp_path / "web.json"
            await run_command([*api, "tunnel", "create", "web",
                               "--credentials-file", str(credentials_file)],
                              name="tunnel-create", log_dir=tmp_path, env=env)
            assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
            credentials = json.loads(credentials_file.read_text())
            # The edge wrote the address its tunnel listener really bound (port 0 resolved).
            assert credentials["edge_url"] == f"ws://{listeners['tunnel']}"
            await run_command([*api, "tunnel", "route", "web", HOST],
                              name="tunnel-route", log_dir=tmp_path, env=env)

            offline = await fetch_json_error(listeners["public"], HOST)
            assert offline.status == 502
            assert offline.json()["error"] == "tunnel_offline"

            async with child_process(
                [CONNECTOR_BIN, "tunnel", "run", "--credentials-file", str(credentials_file),
                 "--url", origin_url],
                name="connector", log_dir=tmp_path, env=env,
            ) as connector:
                assert connector.ready["tunnel_id"] == credentials["tunnel_id"]
                response = await fetch(listeners["public"], HOST, "/hello?from=cli")
                assert response.status == 200, response.text
                seen = response.json()
                assert seen["tag"] == app.tag
                assert seen["target"] == "/hello?from=cli"
                assert seen["headers"]["host"] == HOST

                info = await run_command([*api, "tunnel", "info", "web", "--output", "json"],
                                         name="tunnel-info", log_dir=tmp_path, env=env)
                live = json.loads(info.stdout)
                assert live["connections"], live
                assert {c["connector_id"] for c in live["connections"]} == \
                    {connector.ready["connector_id"]}

                # SIGTERM drains and exits 0: a clean stop for systemd.
                await connector.stop(signal.SIGTERM)
                assert connector.process.returncode == 0, connector.explain()
            await edge.stop(signal.SIGTERM)
            assert edge.process.returncode == 0, edge.explain()
    assert not (tmp_path / "home").exists() or not os.listdir(tmp_path / "home")
