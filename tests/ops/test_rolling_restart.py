"""A rolling restart of one of two connector replicas under steady load loses no request."""

from __future__ import annotations

import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

from .daemons import Daemon, connector_command, daemon, edge_command, prepare_edge
from .web import Origin, request, serve_origin

WORKERS = 8


async def test_restarting_one_of_two_replicas_under_load_loses_no_request(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    async with daemon(edge_command(setup), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)

        def replica(name: str) -> AbstractAsyncContextManager[Daemon]:
            return daemon(connector_command(credentials, tunnel_url, "--url", origin_url,
                                            "--ha-connections", "2", "--grace-period", "20s"),
                          name=name, log_dir=tmp_path)

        sent = 0
        failures: list[str] = []
        statuses: dict[int, int] = {}
        stop_load = trio.Event()
        progress = trio.Event()

        running_workers = WORKERS
        load_finished = trio.Event()

        async def worker(index: int) -> None:
            nonlocal sent, progress, running_workers
            count = 0
            while not stop_load.is_set():
                sent += 1
                response = await request(listeners["public"], "app.example.test",
                                         f"/w{index}/{count}")
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status != 200:
                    failures.append(page_title(response.body))
                count += 1
                progress.set()
            running_workers -= 1
            if running_workers == 0:
                load_finished.set()

        async def wait_for_more_traffic(requests: int) -> None:
            nonlocal progress
            target = sum(statuses.values()) + requests
            while sum(statuses.values()) < target:
                progress = trio.Event()
                await progress.wait()

        async with replica("replica-a") as first, replica("replica-b") as second:
            await first.next_event("ready")
            await second.next_event("ready")
            async with trio.open_nursery() as load:
                for index in range(WORKERS):
                    load.start_soon(worker, index)
                with trio.fail_after(60):
                    await wait_for_more_traffic(100)
                    first.signal(signal.SIGTERM)  # SIGTERM: drain replica A
                    assert await first.wait_exit(30) == 0
                    await wait_for_more_traffic(100)  # B alone carries the load
                    async with replica("replica-a2") as restarted:
                        await restarted.next_event("ready")
                        await wait_for_more_traffic(100)
                        second.signal(signal.SIGTERM)  # and B's turn
                        assert await second.wait_exit(30) == 0
                        await wait_for_more_traffic(100)
                        # The load ends while the restarted replica still serves it.
                        stop_load.set()
                        await load_finished.wait()
    answered = sum(statuses.values())
    assert statuses == {200: answered}, (statuses, failures)
    assert answered == sent
    assert origin.requests == sent


def page_title(body: bytes) -> str:
    text = body.decode(errors="replace")
    start = text.find("<title>")
    return text[start + 7: text.find("</title>")] if start >= 0 else text[:80]
