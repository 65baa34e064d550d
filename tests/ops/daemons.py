"""Real `tunnelgate-edge serve` and `tunnelgate tunnel run` processes for the ops tests.

Every wait here is on something the process itself produces: a JSON event line on its stdout
(`ready`, `metrics`, `reload`), a datagram on the NOTIFY_SOCKET the test bound, its exit. A
process that dies or stays silent fails the test with its exit code and the tail of its
stderr, which is kept in a file so tests can also search it (the redaction test does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e.processes import CONNECTOR_BIN, EDGE_BIN, tail

from connector.config import Credentials, write_credentials
from edge.store.sqlite import SqliteStore

WAIT = 30.0
STOP_WAIT = 15.0
MAX_UNIX_PATH = 100


@dataclass
class Daemon:
    name: str
    process: trio.Process
    stderr_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)

    def explain(self) -> str:
        return (f"{self.name} (pid {self.process.pid}, exit code {self.process.returncode}); "
                f"stderr ends with:\n{tail(self.stderr_path)}")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def _read_line(self) -> bytes | None:
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            data = await stdout.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    async def next_event(self, event: str, seconds: float = WAIT) -> dict[str, Any]:
        """The next `{"event": EVENT, ...}` line on stdout (other lines are kept in events)."""
        with trio.move_on_after(seconds):
            while (line := await self._read_line()) is not None:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    self.events.append(message)
                    if message.get("event") == event:
                        return message
            await self.process.wait()
            pytest.fail(f"{self.explain()}\nexited before printing its {event!r} line")
        pytest.fail(f"{self.explain()}\nprinted no {event!r} line within {seconds:g}s")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, seconds: float = STOP_WAIT) -> int:
        with trio.move_on_after(seconds):
            return await self.process.wait()
        pytest.fail(f"{self.explain()}\ndid not exit within {seconds:g}s")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_WAIT):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.aclose()


@asynccontextmanager
async def daemon(args: Sequence[str], *, name: str, log_dir: Path,
                 env: dict[str, str] | None = None) -> AsyncIterator[Daemon]:
    """Start a command; always stop it (SIGTERM, then SIGKILL) on the way out."""
    stderr_path = log_dir / f"{name}.stderr"
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            env=full_env)
    running = Daemon(name, process, stderr_path)
    try:
        yield running
    finally:
        with trio.CancelScope(shield=True):
            await running.stop()


class NotifySocket:
    """A datagram socket bound where a daemon's NOTIFY_SOCKET points, as systemd would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = str(folder / "notify.sock")
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        self.messages: list[dict[str, str]] = []

    async def bind(self) -> None:
        await self.sock.bind(self.path)

    def close(self) -> None:
        self.sock.close()

    async def receive(self, seconds: float = WAIT) -> dict[str, str]:
        with trio.fail_after(seconds):
            data = await self.sock.recv(65536)
        message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(message)
        return message

    async def wait_for(self, key: str, seconds: float = WAIT) -> dict[str, str]:
        """The first message carrying KEY=1 (earlier ones are kept in `messages`)."""
        with trio.move_on_after(seconds):
            while True:
                message = await self.receive(seconds)
                if message.get(key) == "1":
                    return message
        pytest.fail(f"no {key}=1 on the notify socket within {seconds:g}s; "
                    f"got {self.messages}")


@asynccontextmanager
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    """Bound in tmp_path, or in a short temporary folder when tmp_path is too long for an
    AF_UNIX address."""
    short: str | None = None
    folder = tmp_path
    if len(str(tmp_path / "notify.sock")) > MAX_UNIX_PATH:
        short = tempfile.mkdtemp(prefix="tg-notify-")
        folder = Path(short)
    listener = NotifySocket(folder)
    try:
        await listener.bind()
        yield listener
    finally:
        listener.close()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


def edge_toml(state_dir: Path, *, ops: bool = True) -> str:
    return (
        "[edge]\n"
        'id = "edge-ops"\n'
        f'state_dir = "{state_dir}"\n'
        "[listen]\n"
        'public = "127.0.0.1:0"\n'
        'tunnel = "127.0.0.1:0"\n'
        'admin = "127.0.0.1:0"\n'
        f'ops = "{"127.0.0.1:0" if ops else ""}"\n'
        "[tunnel]\n"
        'heartbeat_interval = "1s"\n'
        'heartbeat_timeout = "5s"\n'
    )


@dataclass
class EdgeSetup:
    """An edge config whose store already holds a tunnel routed to `hostnames`."""

    folder: Path
    config_path: Path
    tunnel_id: str
    tunnel_name: str
    secret: str

    def write_credentials(self, edge_url: str) -> Path:
        path = self.folder / f"{self.tunnel_id}.json"
        path.unlink(missing_ok=True)
        write_credentials(path, Credentials(self.tunnel_id, self.tunnel_name, self.secret,
                                            edge_url))
        return path


def prepare_edge(folder: Path, *hostnames: str, name: str = "ops-tunnel",
                 ops: bool = True) -> EdgeSetup:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "edge.toml"
    config_path.write_text(edge_toml(folder, ops=ops))
    with SqliteStore(folder / "tunnelgate.db") as store:
        tunnel, secret = store.create_tunnel(name)
        for hostname in hostnames:
            store.add_route(tunnel.id, hostname)
    return EdgeSetup(folder, config_path, tunnel.id, tunnel.name, secret)


def edge_command(setup: EdgeSetup, *extra: str) -> list[str]:
    return [EDGE_BIN, "serve", "--config", str(setup.config_path), *extra]


def connector_command(credentials: Path, edge_url: str, *extra: str,
                      global_options: Sequence[str] = ()) -> list[str]:
    return [CONNECTOR_BIN, *global_options, "tunnel", "run", "--credentials-file",
            str(credentials), "--edge", edge_url, *extra]


class TunnelGate:
    """A TCP relay in front of the edge's tunnel listener that holds every connection until
    the test opens it: while closed, no connector can possibly register."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.opened = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[str]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._relay, listeners)
            task_status.started(f"ws://127.0.0.1:{port}")

    async def _relay(self, client: trio.SocketStream) -> None:
        host, _, port = self.upstream.rpartition(":")
        async with client:
            await self.opened.wait()
            upstream = await trio.open_tcp_stream(host, int(port))
            async with upstream, trio.open_nursery() as nursery:

                async def copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                    try:
                        while data := await source.receive_some(65536):
                            await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(copy, client, upstream)
                nursery.start_soon(copy, upstream, client)
