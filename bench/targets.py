"""The ways a request can reach the origin: directly, through tunnelgate, through `ssh -R`.

A target sets itself up from the products' command lines only, exposes the loopback endpoint
that load is sent to, names the processes whose memory the RSS rows read (`connector`, `edge`),
and can open a second route to the WebSocket origin for the idle-streams row. One target is no
route to the origin but a reference server of its own (hypercorn with a trio worker serving
`/small`); it declares the few scenarios it takes part in. A target that cannot be set up is not an error of the run: it is marked `failed` (something broke, with the
reason) or `skipped` (deliberately not measured yet, with the reason), and every other target is
still measured.

Errors::

    BenchError (processes.py)
    ├── ProcessFailed (processes.py)
    └── TargetSkipped      the target is knowingly not measurable yet; never a fake number
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from access_login import ACCESS_CONFIG, APP_COOKIE, sign_in
from load import Endpoint, probe_status, probe_websocket
from origin import Origins
from processes import (
    BenchError,
    ManagedProcess,
    ProcessGroup,
    free_port,
    meaningful_tail,
    process_name,
    process_tree,
    tcp_nodelay_flags,
    wait_until,
)

READY_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path


class TargetSkipped(BenchError):
    """The target is deliberately not measured yet; the message says why."""


@dataclass
class RunContext:
    group: ProcessGroup
    workdir: Path
    origins: Origins
    venv_bin: Path


@dataclass(frozen=True)
class WebsocketRoute:
    endpoint: Endpoint
    rss_roles: dict[str, ManagedProcess]


@dataclass
class Target(ABC):
    name: str
    label: str
    status: str = "pending"  # pending -> ok | failed | skipped
    reason: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    _endpoint: Endpoint | None = None
    # The scenario ids this target is measured in (None: all). A reference that serves only
    # `/small` leaves the others out, so those rows neither fail nor show a number for it.
    scenarios: ClassVar[frozenset[str] | None] = None

    def takes_part_in(self, scenario: str) -> bool:
        return self.scenarios is None or scenario in self.scenarios

    @abstractmethod
    def setup(self, context: RunContext) -> None:
        ...

    @abstractmethod
    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        ...

    def close_websocket_route(self, context: RunContext) -> None:  # noqa: B027 (default: nothing)
        """Stop what `open_websocket_route` started (nothing by default)."""

    def rss_roles(self) -> dict[str, ManagedProcess]:
        return {}

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise BenchError(f"{self.name} has no endpoint before setup")
        return self._endpoint

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    def health(self) -> str | None:
        """None while every process of the target runs, else why it stopped."""
        for process in self.processes:
            if not process.alive():
                return process.exit_reason()
        return None

    def mark(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason

    def shutdown(self, group: ProcessGroup) -> None:
        """Stop this target's processes early (it failed; the others go on being measured)."""
        for process in reversed(self.processes):
            group.stop(process)


@dataclass
class Direct(Target):
    """The origin itself: the ceiling every tunnel is compared to."""

    def setup(self, context: RunContext) -> None:
        self._endpoint = context.origins.http_endpoint

    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        return WebsocketRoute(Endpoint(context.origins.websocket_port, None), {})


@dataclass
class HypercornTrio(Target):
    """hypercorn with one trio worker serving `/small` itself (bench/hypercorn_app.py).

    The reference of the "keep-alive >= 2x hypercorn-trio" target: what a plain Python ASGI
    server manages on this machine with nothing in front of it. It has no `/64m`, no uploads,
    no WebSocket endpoint and no connector or edge, so it takes part only in the wrk rows on
    `/small`. Not in the fixed-rate latency rows either: hypercorn (h11) sends its status line
    without a reason phrase (`HTTP/1.1 200 `), and h2load `--h1` then records status 0 for
    every response, which the harness rightly refuses as failed requests; wrk reads the status
    fine. `--backlog` and `--keep-alive` match nginx's `listen ... backlog=4096` and
    `keepalive_timeout 300s`; like nginx, it writes no access log.
    """

    scenarios: ClassVar[frozenset[str] | None] = frozenset({"keepalive", "close"})

    def setup(self, context: RunContext) -> None:
        hypercorn = context.venv_bin / "hypercorn"
        if not hypercorn.exists():
            raise BenchError(
                f"{hypercorn} does not exist: install it with "
                f"{context.venv_bin / 'pip'} install 'hypercorn[trio]' (or make bench)"
            )
        port = free_port()
        argv = [str(hypercorn), "--worker-class", "trio", "--workers", "1"]
        argv += ["--bind", f"127.0.0.1:{port}", "--backlog", "4096", "--keep-alive", "300"]
        bench_dir = Path(__file__).resolve().parent
        server = context.group.start("hypercorn", [*argv, "hypercorn_app:app"], cwd=bench_dir)
        self.processes.append(server)
        self._endpoint = endpoint = Endpoint(port, None)
        wait_until(
            lambda: probe_status(endpoint, "/small") == 200,
            timeout_s=READY_TIMEOUT_S,
            what="hypercorn --worker-class trio",
            watch=[server],
        )

    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        raise BenchError("not measured: serves /small only")


def _run_cli(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"{what}: {error}") from error
    if done.returncode != 0:
        tail = meaningful_tail(done.stderr or done.stdout)
        raise BenchError(f"{what} exited with code {done.returncode}: {tail}")
    return done.stdout


def _announced_ready(process: ManagedProcess) -> bool:
    for line in process.stdout_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ready":
            return True
    return False


@dataclass
class Tunnelgate(Target):
    """tunnelgate edge + connector, set up exactly as an operator would with the two CLIs."""

    hostname: str = "bench.localhost"
    websocket_hostname: str = "bench-ws.localhost"
    edge: ManagedProcess | None = None
    connector: ManagedProcess | None = None
    websocket_connector: ManagedProcess | None = None
    config_dir: Path = Path()
    admin_port: int = 0

    def _executables(self, context: RunContext) -> tuple[Path, Path]:
        edge_cli = context.venv_bin / "tunnelgate-edge"
        connector_cli = context.venv_bin / "tunnelgate"
        for executable in (edge_cli, connector_cli):
            if not executable.exists():
                raise BenchError(f"{executable} does not exist (pip install -e . into .venv)")
        return edge_cli, connector_cli

    def _admin(self, context: RunContext) -> list[str]:
        _, connector_cli = self._executables(context)
        token_file = self.config_dir / "admin.token"
        api = f"http://127.0.0.1:{self.admin_port}"
        return [str(connector_cli), "--api", api, "--api-token-file", str(token_file)]

    def _create_tunnel(self, context: RunContext, name: str, hostname: str) -> Path:
        credentials = self.config_dir / f"{name}.json"
        admin = self._admin(context)
        create = ["tunnel", "create", name, "--credentials-file", str(credentials)]
        _run_cli([*admin, *create], f"tunnelgate tunnel create {name}")
        _run_cli([*admin, "tunnel", "route", name, hostname], f"tunnelgate tunnel route {name}")
        return credentials

    def _start_connector(self, context: RunContext, credentials: Path, url: str) -> ManagedProcess:
        _, connector_cli = self._executables(context)
        argv = [str(connector_cli), "tunnel", "run", "--credentials-file", str(credentials)]
        return context.group.start("connector", [*argv, "--url", url])

    def _init_options(self) -> list[str]:
        """Options `tunnelgate-edge init` gets besides the listeners (none for the plain edge)."""
        return []

    def setup(self, context: RunContext) -> None:
        edge_cli, _ = self._executables(context)
        self.config_dir = context.workdir / self.name
        public, tunnel, self.admin_port, ops = (free_port() for _ in range(4))
        _run_cli(
            [
                str(edge_cli),
                "init",
                "--dir",
                str(self.config_dir),
                "--public-listen",
                f"127.0.0.1:{public}",
                "--tunnel-listen",
                f"127.0.0.1:{tunnel}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--ops-listen",
                f"127.0.0.1:{ops}",
                *self._init_options(),
            ],
            "tunnelgate-edge init",
        )
        edge = context.group.start(
            "edge", [str(edge_cli), "serve", "--config", str(self.config_dir / "edge.toml")]
        )
        self.edge = edge
        self.processes.append(edge)
        ops_endpoint = Endpoint(ops, None)
        wait_until(
            lambda: _announced_ready(edge) or probe_status(ops_endpoint, "/ready") == 200,
            timeout_s=READY_TIMEOUT_S,
            what="tunnelgate-edge serve",
            watch=[edge],
        )
        credentials = self._create_tunnel(context, "bench", self.hostname)
        nginx_url = f"http://127.0.0.1:{context.origins.nginx_port}"
        self.connector = self._start_connector(context, credentials, nginx_url)
        self.processes.append(self.connector)
        self._endpoint = Endpoint(public, self.hostname)
        endpoint = self._endpoint
        answers: list[int | None] = []

        def route_answers() -> bool:
            answers.append(probe_status(endpoint, "/"))
            return answers[-1] == 200

        try:
            wait_until(
                route_answers,
                timeout_s=READY_TIMEOUT_S,
                what="tunnelgate route to nginx",
                watch=self.processes,
            )
        except BenchError as error:
            last = answers[-1] if answers else None
            raise BenchError(f"{error} (last answer: {last or 'none'})") from error

    def rss_roles(self) -> dict[str, ManagedProcess]:
        if self.edge is None or self.connector is None:
            return {}
        return {"connector": self.connector, "edge": self.edge}

    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        """A second tunnel with its own connector, so its memory before and after is clean."""
        return self._websocket_route(context, ())

    def _websocket_route(self, context: RunContext, headers: tuple[str, ...]) -> WebsocketRoute:
        if self.edge is None:
            raise BenchError("edge not running")
        credentials = self._create_tunnel(context, "bench-ws", self.websocket_hostname)
        origin_url = f"http://127.0.0.1:{context.origins.websocket_port}"
        connector = self._start_connector(context, credentials, origin_url)
        self.websocket_connector = connector
        endpoint = Endpoint(self.endpoint.port, self.websocket_hostname, headers)
        wait_until(
            lambda: probe_websocket(endpoint, "/ws"),
            timeout_s=READY_TIMEOUT_S,
            what="tunnelgate route to the WebSocket origin",
            watch=[*self.processes, connector],
        )
        return WebsocketRoute(endpoint, {"connector": connector, "edge": self.edge})

    def close_websocket_route(self, context: RunContext) -> None:
        if self.websocket_connector is not None:
            context.group.stop(self.websocket_connector)
            self.websocket_connector = None


@dataclass
class TunnelgateAccess(Tunnelgate):
    """tunnelgate with an Access application in front of the route and a valid session cookie.

    Its own edge (initialised with an auth domain) and connector, set up as for `Tunnelgate`;
    then `tunnelgate-edge apply` puts a one-time PIN login in front of the hostname, the harness
    signs in once (access_login.py) and every load request carries the app cookie, so each one
    pays for the cookie's verification and the identity headers the edge adds.
    """

    auth_domain: str = "auth.localhost"
    email: str = "bench@example.com"
    websocket_email: str = "bench-ws@example.com"

    def _init_options(self) -> list[str]:
        return ["--auth-domain", self.auth_domain]

    def setup(self, context: RunContext) -> None:
        super().setup(context)
        edge_cli, _ = self._executables(context)
        if self.edge is None:
            raise BenchError("edge not running")
        config = self.config_dir / "access.toml"
        config.write_text(
            ACCESS_CONFIG.format(domain=self.hostname, websocket_domain=self.websocket_hostname)
        )
        _run_cli(
            [str(edge_cli), "apply", *self._admin(context)[1:], str(config)],
            "tunnelgate-edge apply",
        )
        plain = self.endpoint
        wait_until(
            lambda: probe_status(plain, "/small") == 302,
            timeout_s=READY_TIMEOUT_S,
            what="Access app in front of the route (302 to the login)",
            watch=self.processes,
        )
        cookie = sign_in(
            port=plain.port,
            app_host=self.hostname,
            auth_host=self.auth_domain,
            email=self.email,
            edge_log=self.edge.stderr_path,
            timeout_s=READY_TIMEOUT_S,
        )
        signed_in = Endpoint(plain.port, self.hostname, (f"Cookie: {APP_COOKIE}={cookie}",))
        status = probe_status(signed_in, "/small")
        if status != 200:
            raise BenchError(f"a request with the app cookie got {status or 'no answer'}, not 200")
        self._endpoint = signed_in

    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        """The second tunnel behind its own Access app: each upgrade carries that app's cookie
        and the Origin a browser would send, so every held stream has passed the gate and is
        watched by its grant's guard (closed when the session ends)."""
        if self.edge is None:
            raise BenchError("edge not running")
        cookie = sign_in(
            port=self.endpoint.port,
            app_host=self.websocket_hostname,
            auth_host=self.auth_domain,
            email=self.websocket_email,
            edge_log=self.edge.stderr_path,
            timeout_s=READY_TIMEOUT_S,
            final_page=False,  # the WebSocket origin answers upgrades only
        )
        return self._websocket_route(
            context,
            (f"Cookie: {APP_COOKIE}={cookie}", f"Origin: http://{self.websocket_hostname}"),
        )


@dataclass(frozen=True)
class SshKeys:
    directory: Path
    client_key: Path
    host_key: Path
    authorized_keys: Path

    @classmethod
    def generate(cls, directory: Path) -> SshKeys:
        directory.mkdir(parents=True, exist_ok=True)
        client_key, host_key = directory / "client_ed25519", directory / "host_ed25519"
        for key in (client_key, host_key):
            _run_cli(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], "ssh-keygen")
        authorized_keys = directory / "authorized_keys"
        authorized_keys.write_text(client_key.with_suffix(".pub").read_text())
        return cls(directory, client_key, host_key, authorized_keys)


SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
GatewayPorts no
PermitTTY yes
UseDNS no
PrintMotd no
MaxStartups 100
LogLevel ERROR
"""


@dataclass
class SshReverse(Target):
    """OpenSSH `ssh -R` on loopback, the reference every operator knows.

    `interactive=False` is the plain `ssh -N -R` (Nagle on). `interactive=True` adds a tty and a
    remote `sleep infinity` (`ssh -tt ... 'exec sleep infinity'`): OpenSSH sets TCP_NODELAY on
    both ends of an interactive session, the variant known to reach ~2 ms p99 here.
    """

    interactive: bool = False
    keys: SshKeys | None = None
    sshd: ManagedProcess | None = None
    client: ManagedProcess | None = None
    sshd_port: int = 0
    websocket_client: ManagedProcess | None = None

    def _start_sshd(self, context: RunContext, keys: SshKeys) -> ManagedProcess:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self.sshd_port = free_port()
        config = context.workdir / f"sshd-{self.name}.conf"
        config.write_text(
            SSHD_CONFIG.format(
                port=self.sshd_port,
                host_key=keys.host_key,
                authorized_keys=keys.authorized_keys,
            )
        )
        sshd = context.group.start("sshd", [SSHD, "-D", "-e", "-f", str(config)])
        port = self.sshd_port
        wait_until(
            lambda: _accepts_ssh(port),
            timeout_s=READY_TIMEOUT_S,
            what="sshd",
            watch=[sshd],
        )
        return sshd

    def client_argv(self, keys: SshKeys, forward: str, extra: list[str] | None = None) -> list[str]:
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(keys.client_key),
            "-p",
            str(self.sshd_port),
            "-R",
            forward,
            *(extra or []),
        ]
        login = f"{getpass.getuser()}@127.0.0.1"
        if self.interactive:
            return [*argv, "-tt", login, "exec sleep infinity"]
        return [*argv, "-N", login]

    def _start_client(self, context: RunContext, forward: str, name: str) -> ManagedProcess:
        if self.keys is None or self.sshd is None:
            raise BenchError("sshd not running")
        client = context.group.start(
            name, self.client_argv(self.keys, forward), keep_stdin_open=self.interactive
        )
        if self.interactive:
            sshd = self.sshd
            sleepers = len(_sleeping_sessions(sshd))
            wait_until(
                lambda: len(_sleeping_sessions(sshd)) > sleepers,
                timeout_s=READY_TIMEOUT_S,
                what="ssh interactive session",
                watch=[sshd, client],
            )
        return client

    def setup(self, context: RunContext) -> None:
        self.keys = SshKeys.generate(context.workdir / f"ssh-{self.name}")
        self.sshd = self._start_sshd(context, self.keys)
        self.processes.append(self.sshd)
        forward_port = free_port()
        origin = context.origins.nginx_port
        forward = f"127.0.0.1:{forward_port}:127.0.0.1:{origin}"
        self.client = self._start_client(context, forward, f"ssh-{self.name}")
        self.processes.append(self.client)
        self._endpoint = endpoint = Endpoint(forward_port, None)
        wait_until(
            lambda: probe_status(endpoint, "/small") == 200,
            timeout_s=READY_TIMEOUT_S,
            what="ssh -R forward to nginx",
            watch=self.processes,
        )

    def rss_roles(self) -> dict[str, ManagedProcess]:
        if self.sshd is None or self.client is None:
            return {}
        return {"connector": self.client, "edge": self.sshd}

    def nodelay(self) -> dict[str, list[bool]]:
        """TCP_NODELAY as actually set on the ssh connection, read from both processes."""
        if self.sshd is None or self.client is None:
            return {}
        server_flags = [
            flag
            for pid in process_tree(self.sshd.pid)[1:]
            for flag in tcp_nodelay_flags(pid, self.sshd_port)
        ]
        return {
            "client": tcp_nodelay_flags(self.client.pid, self.sshd_port),
            "server": server_flags,
        }

    def open_websocket_route(self, context: RunContext) -> WebsocketRoute:
        """A second ssh connection forwarding to the WebSocket origin (same sshd)."""
        if self.sshd is None:
            raise BenchError("sshd not running")
        forward_port = free_port()
        forward = f"127.0.0.1:{forward_port}:127.0.0.1:{context.origins.websocket_port}"
        client = self._start_client(context, forward, f"ssh-ws-{self.name}")
        self.websocket_client = client
        endpoint = Endpoint(forward_port, None)
        wait_until(
            lambda: probe_websocket(endpoint, "/ws"),
            timeout_s=READY_TIMEOUT_S,
            what="ssh -R forward to the WebSocket origin",
            watch=[*self.processes, client],
        )
        return WebsocketRoute(endpoint, {"connector": client, "edge": self.sshd})

    def close_websocket_route(self, context: RunContext) -> None:
        if self.websocket_client is not None:
            context.group.stop(self.websocket_client)
            self.websocket_client = None


def _accepts_ssh(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _sleeping_sessions(sshd: ManagedProcess) -> list[int]:
    return [pid for pid in process_tree(sshd.pid) if process_name(pid) == "sleep"]
