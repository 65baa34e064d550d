"""sd_notify from the real daemons, read from a datagram socket passed as NOTIFY_SOCKET:
READY=1 when serving (the edge: listeners bound; the connector: first registered connection),
WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 once SIGTERM starts the drain."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from .daemons import (
    TunnelGate,
    connector_command,
    daemon,
    edge_command,
    notify_socket,
    prepare_edge,
)
from .web import request

WATCHDOG_USEC = "200000"  # pings every 0.1 s


async def test_edge_sends_ready_then_watchdog_then_stopping(tmp_path: Path) -> None:
    setup = prepare_edge(tmp_path / "edge")
    async with notify_socket(tmp_path) as notify, daemon(
        edge_command(setup), name="edge", log_dir=tmp_path,
        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": WATCHDOG_USEC},
    ) as edge:
        ready_line = await edge.next_event("ready")
        first = await notify.receive()
        assert first["READY"] == "1", notify.messages
        # READY=1 means every listener is bound: the ops listener answers right away.
        ops = ready_line["listeners"]["ops"]
        assert (await request(ops, ops, "/healthz")).status == 200
        await notify.wait_for("WATCHDOG")
        await notify.wait_for("WATCHDOG")
        assert not any("STOPPING" in message for message in notify.messages)

        edge.signal(signal.SIGTERM)
        stopping = await notify.wait_for("STOPPING")
        assert "draining" in stopping.get("STATUS", "")
        assert await edge.wait_exit() == 0


async def test_connector_is_ready_only_after_its_first_registered_connection(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        gate = TunnelGate(listeners["tunnel"])
        gate_url = await nursery.start(gate.serve)
        credentials = setup.write_credentials(gate_url)
        async with notify_socket(tmp_path) as notify, daemon(
            connector_command(credentials, gate_url, "--url", "http_status:204",
                              "--metrics", "127.0.0.1:0", "--ha-connections", "2"),
            name="connector", log_dir=tmp_path,
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": WATCHDOG_USEC},
        ) as connector:
            ops = (await connector.next_event("metrics"))["address"]
            # The gate holds every tunnel connection: alive (watchdog pings, /ready answers)
            # but not ready.
            await notify.wait_for("WATCHDOG")
            not_ready = await request(ops, ops, "/ready")
            assert not_ready.status == 503
            assert not_ready.json()["readyConnections"] == 0
            assert not any(m.get("READY") == "1" for m in notify.messages), notify.messages

            gate.opened.set()
            await connector.next_event("ready")
            ready = await notify.wait_for("READY")
            assert "connected" in ready.get("STATUS", "")
            now_ready = await request(ops, ops, "/ready")
            assert now_ready.status == 200
            assert now_ready.json()["readyConnections"] >= 1
            await notify.wait_for("WATCHDOG")

            connector.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING")
            assert await connector.wait_exit() == 0
