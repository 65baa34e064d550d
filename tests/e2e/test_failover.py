"""The tunnel's two ends come and go: a killed connector turns into a prompt 502 that names
the tunnel (no hang), and a restarted edge is found again by the running connector."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from connector.config import write_credentials

from .conftest import ConnectorFactory, EdgeFactory, RunningEdge, connector_process
from .origin import Origin
from .visitor import fetch, fetch_json_error

pytestmark = pytest.mark.e2e

# Hang guards, not timing assertions: a broken build fails here instead of blocking the suite.
HANG_GUARD = 20.0
RECONNECT_GUARD = 30.0
HOST = "fragile.example.test"


async def test_killed_connector_turns_into_a_prompt_502_naming_the_tunnel(
    tmp_path: Path, edge: RunningEdge, origin: tuple[Origin, str]
) -> None:
    credentials = edge.create_tunnel("fragile", HOST)
    credentials_file = tmp_path / "fragile.json"
    write_credentials(credentials_file, credentials)
    async with connector_process(credentials_file, origin[1], edge.runtime.listeners["tunnel"],
                                 tmp_path, ha_connections=2) as connector:
        await edge.wait_connections(credentials.tunnel_id, 2)
        with trio.fail_after(HANG_GUARD):
            assert (await fetch(edge.public, HOST, "/hello")).status == 200
        connector.process.send_signal(signal.SIGKILL)
        assert await connector.wait_exit(HANG_GUARD) == -signal.SIGKILL

        # Right after the kill the edge may or may not have noticed yet; either way the
        # visitor gets the tunnel page at once, never a hang or an origin error.
        with trio.fail_after(HANG_GUARD):
            first = await fetch_json_error(edge.public, HOST)
        assert first.status == 502, first.text
        assert first.json()["error"] == "tunnel_offline"
        assert first.json()["tunnel"] == "fragile"

        await edge.wait_connections(credentials.tunnel_id, 0)
        with trio.fail_after(HANG_GUARD):
            page = await fetch(edge.public, HOST)
        assert page.status == 502
        assert "Tunnel offline" in page.text
        assert "fragile" in page.text


async def test_connector_reconnects_after_an_edge_restart(
    edge_factory: EdgeFactory, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    first_edge = await edge_factory()
    credentials = first_edge.create_tunnel("steady", "steady.example.test")
    connector = await connector_factory(first_edge, credentials, origin[1], ha_connections=2)
    with trio.fail_after(HANG_GUARD):
        assert (await fetch(first_edge.public, "steady.example.test", "/hello")).status == 200

    tunnel_address = first_edge.runtime.listeners["tunnel"]
    await first_edge.stop()
    assert first_edge.live_connections(credentials.tunnel_id) == 0

    # Same store, same tunnel address: what a restarted edge process looks like to a connector.
    second_edge = await edge_factory(tunnel=tunnel_address,
                                     state_dir=first_edge.config_path.parent)
    assert second_edge.runtime.listeners["tunnel"] == tunnel_address
    await second_edge.wait_connections(credentials.tunnel_id, 2, within=RECONNECT_GUARD)
    with trio.fail_after(HANG_GUARD):
        response = await fetch(second_edge.public, "steady.example.test", "/item/7")
    assert (response.status, response.body) == (200, b"item 7")
    assert connector.supervisor.state.reconnects >= 2
    assert connector.supervisor.permanent_error is None
