"""Fixtures for the end-to-end tests: a real edge, real connectors and a real origin, all on
127.0.0.1 with OS-chosen ports.

In-process parts share the test's trio run (`serve_edge`, `Supervisor`, `Origin`) so a test can
wait on their own signals: the edge registry's `changed` event, the supervisor's
`first_registered`. Tests that need a process boundary (memory, SIGKILL, exit codes, the CLI)
start the real commands through `processes.child_process`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from connector.config import Credentials, RunSettings, write_credentials
from connector.ingress import IngressTable, OriginRequest
from connector.supervisor import Supervisor
from edge.config import load_edge_config
from edge.server import EdgeRuntime, serve_edge
from edge.store.sqlite import SqliteStore

from .origin import Origin, serve
from .processes import CONNECTOR_BIN, EDGE_BIN, ChildProcess, child_process

SIGNAL_TIMEOUT = 20.0


def edge_toml(state_dir: Path, *, tunnel: str = "127.0.0.1:0", extra: str = "") -> str:
    return (
        "[edge]\n"
        'id = "edge-e2e"\n'
        f'state_dir = "{state_dir}"\n'
        "[listen]\n"
        'public = "127.0.0.1:0"\n'
        f'tunnel = "{tunnel}"\n'
        'admin = "127.0.0.1:0"\n'
        'ops = "127.0.0.1:0"\n'
        f"{extra}"
    )


@dataclass
class RunningEdge:
    """An edge served in the test's trio run."""

    runtime: EdgeRuntime
    config_path: Path
    cancel_scope: trio.CancelScope
    stopped: trio.Event

    @property
    def public(self) -> str:
        return self.runtime.listeners["public"]

    @property
    def tunnel_url(self) -> str:
        return f"ws://{self.runtime.listeners['tunnel']}"

    def create_tunnel(self, name: str, *hostnames: str) -> Credentials:
        """A tunnel with routes, written to the store and made live on the request path."""
        store = self.runtime.state.store
        tunnel, secret = store.create_tunnel(name)
        for hostname in hostnames:
            store.add_route(tunnel.id, hostname)
        self.runtime.state.reload()
        return Credentials(tunnel.id, tunnel.name, secret, self.tunnel_url)

    def live_connections(self, tunnel_id: str) -> int:
        return len(self.runtime.registry.connections(tunnel_id))

    async def wait_connections(self, tunnel_id: str, count: int, *,
                               within: float = SIGNAL_TIMEOUT) -> None:
        """Until `count` connections of the tunnel are registered (or, with 0, none is)."""
        registry = self.runtime.registry
        with trio.move_on_after(within):
            while self.live_connections(tunnel_id) != count:
                await registry.changed.wait()
            return
        pytest.fail(f"tunnel {tunnel_id} has {self.live_connections(tunnel_id)} live "
                    f"connections at the edge after {within:g}s, expected {count}")

    async def stop(self) -> None:
        """Stop the edge as a restart would: listeners and tunnel connections go away."""
        self.runtime.shutdown()
        with trio.move_on_after(SIGNAL_TIMEOUT):
            await self.stopped.wait()
            return
        self.cancel_scope.cancel()
        pytest.fail("the edge did not stop after shutdown()")


EdgeFactory = Callable[..., Awaitable[RunningEdge]]


@pytest.fixture
def edge_factory(nursery: trio.Nursery, tmp_path: Path) -> EdgeFactory:
    """Start an edge; `extra` is appended to edge.toml, `tunnel` pins the tunnel listener."""
    counter = 0

    async def start(*, extra: str = "", tunnel: str = "127.0.0.1:0",
                    state_dir: Path | None = None) -> RunningEdge:
        nonlocal counter
        counter += 1
        folder = tmp_path / f"edge-{counter}"
        folder.mkdir()
        config_path = folder / "edge.toml"
        config_path.write_text(edge_toml(state_dir or folder, tunnel=tunnel, extra=extra))
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
        return RunningEdge(runtime, config_path, scope, stopped)

    return start


@pytest.fixture
async def edge(edge_factory: EdgeFactory) -> RunningEdge:
    return await edge_factory()


@pytest.fixture
async def origin(nursery: trio.Nursery) -> tuple[Origin, str]:
    """An origin on 127.0.0.1 (it stops with the test's nursery) and its "http://HOST:PORT"."""
    app = Origin("in-process")
    address = await nursery.start(serve, app, "127.0.0.1", 0)
    return app, f"http://{address}"


@dataclass
class RunningConnector:
    supervisor: Supervisor
    credentials: Credentials


ConnectorFactory = Callable[..., Awaitable[RunningConnector]]


@pytest.fixture
def connector_factory(nursery: trio.Nursery) -> ConnectorFactory:
    """Run a connector (in-process Supervisor) and wait until all its connections registered
    at the edge, so a test's first request never races the registration."""

    async def start(edge: RunningEdge, credentials: Credentials, service: str, *,
                    ha_connections: int = 2,
                    origin_request: OriginRequest | None = None) -> RunningConnector:
        settings = RunSettings(
            credentials=credentials,
            edges=(edge.tunnel_url,),
            ingress=IngressTable.single(service, origin_request),
            ha_connections=ha_connections,
            grace_period=5.0,
        )
        supervisor = Supervisor(settings)
        await nursery.start(supervisor.run)
        await edge.wait_connections(credentials.tunnel_id, ha_connections)
        with trio.fail_after(SIGNAL_TIMEOUT):
            await supervisor.state.first_registered.wait()
        return RunningConnector(supervisor, credentials)

    return start


def mib(n: float) -> int:
    return math.ceil(n * 1024 * 1024)


@dataclass
class EdgeFiles:
    """An edge's config folder prepared for `tunnelgate-edge serve`, with tunnels in its store."""

    folder: Path

    @property
    def config_path(self) -> Path:
        return self.folder / "edge.toml"

    def create_tunnel(self, name: str, *hostnames: str) -> Path:
        """Create a tunnel in the store (before the edge starts); returns its credentials file."""
        config = load_edge_config(self.config_path)
        with SqliteStore(config.store_path()) as store:
            tunnel, secret = store.create_tunnel(name)
            for hostname in hostnames:
                store.add_route(tunnel.id, hostname)
        path = self.folder / f"{name}.json"
        write_credentials(path, Credentials(tunnel.id, tunnel.name, secret))
        return path


@pytest.fixture
def edge_files(tmp_path: Path) -> EdgeFiles:
    folder = tmp_path / "edge-process"
    folder.mkdir()
    (folder / "edge.toml").write_text(edge_toml(folder))
    return EdgeFiles(folder)


def edge_process(files: EdgeFiles, log_dir: Path) -> AbstractAsyncContextManager[ChildProcess]:
    """`tunnelgate-edge serve`, ready once it printed its listeners."""
    return child_process([EDGE_BIN, "serve", "--config", str(files.config_path)],
                         name="edge", log_dir=log_dir)


def connector_process(credentials_file: Path, origin_url: str, edge_tunnel: str, log_dir: Path,
                      *, ha_connections: int = 2, name: str = "connector",
                      wait_ready: bool = True) -> AbstractAsyncContextManager[ChildProcess]:
    """`tunnelgate tunnel run --url`, ready once its first connection registered."""
    return child_process(
        [CONNECTOR_BIN, "tunnel", "run", "--credentials-file", str(credentials_file),
         "--url", origin_url, "--edge", f"ws://{edge_tunnel}",
         "--ha-connections", str(ha_connections)],
        name=name, log_dir=log_dir, wait_ready=wait_ready)
