"""SIGHUP reloads the connector's ingress rules (or keeps them, saying why); SIGTERM drains the
connector and the edge without cutting an upload in flight; a second signal stops at once."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import pytest
import trio

from .daemons import (
    connector_command,
    daemon,
    edge_command,
    notify_socket,
    prepare_edge,
)
from .web import Origin, Response, request, serve_origin, split_address

CHUNK = b"c" * 16384
CHUNKS = 40


def rules(origin_url: str, *, app_service: str | None = None) -> str:
    return (
        "[[ingress]]\n"
        'hostname = "app.example.test"\n'
        f'service = "{app_service or origin_url}"\n'
        "[[ingress]]\n"
        'service = "http_status:404"\n'
    )


async def test_sighup_keeps_the_old_rules_on_a_broken_file_and_swaps_in_a_good_one(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin(tag="old-rules")
    origin_url = await nursery.start(serve_origin, origin)
    config = tmp_path / "connector.toml"
    config.write_text(rules(origin_url))
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with daemon(
            connector_command(credentials, tunnel_url, "--config", str(config),
                              "--metrics", "127.0.0.1:0", "--ha-connections", "1"),
            name="connector", log_dir=tmp_path,
        ) as connector:
            await connector.next_event("ready")
            public = listeners["public"]

            async def app() -> Response:
                return await request(public, "app.example.test", "/where")

            assert (await app()).json()["tag"] == "old-rules"

            config.write_text(rules(origin_url) + "[[ingress]\n")  # not TOML
            connector.signal(signal.SIGHUP)
            refused = await connector.next_event("reload")
            assert refused["ok"] is False
            assert "not valid TOML" in refused["error"]
            assert refused["rules"] == 2
            still = await app()
            assert (still.status, still.json()["tag"]) == (200, "old-rules")

            config.write_text(rules(origin_url).replace('service = "http_status:404"',
                                                        'service = "http_status:1404"'))
            connector.signal(signal.SIGHUP)
            invalid = await connector.next_event("reload")
            assert invalid["ok"] is False
            assert invalid["error"].startswith(f"{config}: ingress[1].service")
            assert (await app()).json()["tag"] == "old-rules"

            config.write_text(rules(origin_url, app_service="http_status:418"))
            connector.signal(signal.SIGHUP)
            swapped = await connector.next_event("reload")
            assert (swapped["ok"], swapped["rules"]) == (True, 2)
            assert (await app()).status == 418
            assert origin.requests == 3

            log = connector.stderr_text()
            assert log.count("ingress reload failed, keeping the current 2 rules") == 2
            assert "ingress rules reloaded" in log


async def slow_upload(first_sent: trio.Event, go_on: trio.Event) -> AsyncIterator[bytes]:
    """One chunk, then wait for the test, then the rest."""
    yield CHUNK
    first_sent.set()
    await go_on.wait()
    for _ in range(CHUNKS - 1):
        yield CHUNK


async def test_sigterm_to_the_connector_lets_an_upload_in_flight_finish(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with notify_socket(tmp_path) as notify, daemon(
            connector_command(credentials, tunnel_url, "--url", origin_url,
                              "--ha-connections", "2", "--grace-period", "60s"),
            name="connector", log_dir=tmp_path, env={"NOTIFY_SOCKET": notify.path},
        ) as connector:
            await connector.next_event("ready")
            first_sent, go_on = trio.Event(), trio.Event()
            result: list[Response] = []

            async def upload() -> None:
                result.append(await request(
                    listeners["public"], "app.example.test", "/upload", method="POST",
                    body=slow_upload(first_sent, go_on), content_length=len(CHUNK) * CHUNKS))

            nursery.start_soon(upload)
            with trio.fail_after(30):
                await origin.body_started.wait()  # the upload is in flight, at the origin
            connector.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING")  # draining now
            go_on.set()
            assert await connector.wait_exit(seconds=30) == 0
            assert len(result) == 1
            assert result[0].status == 200
            assert result[0].json()["bytes"] == len(CHUNK) * CHUNKS
            # Drained: the tunnel has no connection left for new requests.
            after = await request(listeners["public"], "app.example.test", "/late")
            assert after.status == 502


async def test_sigterm_to_the_edge_stops_accepting_and_lets_an_upload_finish(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with notify_socket(tmp_path) as notify, daemon(
        edge_command(setup, "--grace-period", "60s"), name="edge", log_dir=tmp_path,
        env={"NOTIFY_SOCKET": notify.path},
    ) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with daemon(connector_command(credentials, tunnel_url, "--url", origin_url,
                                            "--ha-connections", "1"),
                          name="connector", log_dir=tmp_path) as connector:
            await connector.next_event("ready")
            await notify.wait_for("READY")
            first_sent, go_on = trio.Event(), trio.Event()
            result: list[Response] = []

            async def upload() -> None:
                result.append(await request(
                    listeners["public"], "app.example.test", "/upload", method="POST",
                    body=slow_upload(first_sent, go_on), content_length=len(CHUNK) * CHUNKS))

            nursery.start_soon(upload)
            with trio.fail_after(30):
                await origin.body_started.wait()
            edge.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING")
            # No new connections once draining: the public listener is closed.
            with pytest.raises(OSError, match="connect"):
                await trio.open_tcp_stream(*split_address(listeners["public"]))
            ops = await request(listeners["ops"], listeners["ops"], "/ready")
            assert (ops.status, ops.json()["status"]) == (503, "draining")
            go_on.set()
            assert await edge.wait_exit(seconds=30) == 0
            assert result[0].status == 200
            assert result[0].json()["bytes"] == len(CHUNK) * CHUNKS


async def test_a_second_sigterm_stops_the_edge_without_waiting_for_the_grace_period(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with notify_socket(tmp_path) as notify, daemon(
        edge_command(setup, "--grace-period", "1h"), name="edge", log_dir=tmp_path,
        env={"NOTIFY_SOCKET": notify.path},
    ) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with daemon(connector_command(credentials, tunnel_url, "--url", origin_url,
                                            "--ha-connections", "1"),
                          name="connector", log_dir=tmp_path) as connector:
            await connector.next_event("ready")
            stalled = trio.Event()  # never set: the upload stays in flight

            async def upload() -> None:
                try:
                    await request(listeners["public"], "app.example.test", "/upload",
                                  method="POST", body=slow_upload(trio.Event(), stalled),
                                  content_length=len(CHUNK) * CHUNKS)
                except (trio.BrokenResourceError, trio.ClosedResourceError, AssertionError,
                        h11.ProtocolError):
                    pass  # the edge cut it: that is the point

            nursery.start_soon(upload)
            with trio.fail_after(30):
                await origin.body_started.wait()
            edge.signal(signal.SIGTERM)
            await notify.wait_for("STOPPING")
            edge.signal(signal.SIGTERM)
            assert await edge.wait_exit(seconds=15) == 0
            assert "second signal" in edge.stderr_text()
