"""A deployment for TCP applications: an edge with Access, a connector whose ingress sends
``echo.localhost`` to a TCP echo server and ``ssh.localhost`` to a real OpenSSH server, and
service tokens that the apps' policies allow or not. Everything listens on 127.0.0.1 with
OS-chosen ports, in the test's trio run (the ssh client and sshd are real processes)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from connector.access import AccessRequirement
from connector.config import Credentials, RunSettings
from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.supervisor import Supervisor
from edge.access.runtime import AccessRuntime
from edge.admin.api import ChangeEvent, ChangeKind
from edge.config import load_edge_config
from edge.server import EdgeRuntime, serve_edge
from edge.store.access_records import AppRecord, parse_app_spec, parse_policy_list

SIGNAL_TIMEOUT = 20.0
AUTH = "auth.localhost"
ECHO_HOST = "echo.localhost"
SSH_HOST = "ssh.localhost"


def edge_toml(state_dir: Path) -> str:
    return (
        "[edge]\n"
        'id = "edge-tcp"\n'
        f'state_dir = "{state_dir}"\n'
        "[listen]\n"
        'public = "127.0.0.1:0"\n'
        'tunnel = "127.0.0.1:0"\n'
        'admin = "127.0.0.1:0"\n'
        'ops = "127.0.0.1:0"\n'
        f'[access]\nauth_domain = "{AUTH}"\n'
    )


async def serve_echo(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP echo origin that answers each chunk upper-cased (so an answer proves a trip)."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data.upper())
            except trio.BrokenResourceError:
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(echo, listeners, handler_nursery=nursery)


@dataclass
class ServiceToken:
    client_id: str
    secret: str
    secret_file: Path


@dataclass
class TcpDeployment:
    edge: EdgeRuntime
    folder: Path
    allowed: ServiceToken
    denied: ServiceToken
    apps: dict[str, AppRecord]

    @property
    def edge_url(self) -> str:
        return f"http://{self.edge.listeners['public']}"

    @property
    def access(self) -> AccessRuntime:
        assert self.edge.access is not None
        return self.edge.access

    async def decisions(self, app: str) -> list[Mapping[str, Any]]:
        await self.access.audit.drained()
        store = self.edge.state.store
        events = await trio.to_thread.run_sync(lambda: store.audit_events(50, app=app))
        return [e.detail for e in events if e.kind == "access.decision"]


async def _add_app(edge: EdgeRuntime, name: str, domain: str) -> AppRecord:
    """An app that only the service token named ``allowed`` may use."""
    store = edge.state.store
    spec = parse_app_spec({"name": name, "domain": domain})
    policies = parse_policy_list(
        [{"name": "robots", "action": "service_auth", "include": [{"service_token": "allowed"}]}]
    )

    def write() -> AppRecord:
        record = store.create_app(spec)
        store.set_policies(spec.name, policies)
        return record

    record = await trio.to_thread.run_sync(write)
    assert edge.access is not None
    await edge.access.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name=name))
    return record


async def _service_token(edge: EdgeRuntime, folder: Path, name: str) -> ServiceToken:
    store = edge.state.store
    token, secret = await trio.to_thread.run_sync(
        lambda: store.create_service_token(name, duration=3600)
    )
    assert edge.access is not None
    await edge.access.on_change(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name=name))
    secret_file = folder / f"{name}.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    return ServiceToken(token.client_id, secret, secret_file)


def ingress_for(services: dict[str, str], options: OriginRequest) -> IngressTable:
    rules = [
        IngressRule(host, None, parse_service(service), options)
        for host, service in services.items()
    ]
    rules.append(IngressRule(None, None, parse_service("http_status:404"), OriginRequest()))
    return IngressTable(rules)


async def start_deployment(
    nursery: trio.Nursery,
    folder: Path,
    services: dict[str, str],
    *,
    protected: tuple[str, ...] | None = None,
    verify_for: str | None = None,
) -> TcpDeployment:
    """Edge, apps for the ``protected`` hosts (default: all), tokens, then the connector; with
    ``verify_for`` every rule requires an assertion for that host's app (connector side)."""
    await trio.Path(folder).mkdir(parents=True, exist_ok=True)
    config_path = folder / "edge.toml"
    config_path.write_text(edge_toml(folder))
    edge: EdgeRuntime = await nursery.start(serve_edge, load_edge_config(config_path))
    store = edge.state.store
    tunnel, secret = store.create_tunnel("tcp-tests")
    for host in services:
        store.add_route(tunnel.id, host)
    edge.state.reload()
    apps = {}
    for index, host in enumerate(services if protected is None else protected):
        apps[host] = await _add_app(edge, f"tcp{index}", host)
    allowed = await _service_token(edge, folder, "allowed")
    denied = await _service_token(edge, folder, "denied")
    options = OriginRequest()
    if verify_for is not None:
        options = OriginRequest(access=AccessRequirement(
            team_domain=f"http://{AUTH}",
            aud_tags=(apps[verify_for].aud,),
            certs_url=f"http://{edge.listeners['public']}/cdn-cgi/access/certs",
        ))
    edge_url = f"ws://{edge.listeners['tunnel']}"
    settings = RunSettings(
        credentials=Credentials(tunnel.id, tunnel.name, secret, edge_url),
        edges=(edge_url,),
        ingress=ingress_for(services, options),
        ha_connections=1,
        grace_period=1.0,
    )
    supervisor = Supervisor(settings)
    await nursery.start(supervisor.run)
    with trio.fail_after(SIGNAL_TIMEOUT):
        await supervisor.state.first_registered.wait()
        while not edge.registry.connections(tunnel.id):
            await edge.registry.changed.wait()
    return TcpDeployment(edge, folder, allowed, denied, apps)


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(serve_echo)
    return port


@dataclass
class SshServer:
    port: int
    user: str
    client_key: Path


def _require(program: str) -> str:
    found = shutil.which(program) or (f"/usr/sbin/{program}"
                                      if Path(f"/usr/sbin/{program}").exists() else None)
    if found is None:
        pytest.fail(f"{program} is missing: apt-get install openssh-server openssh-client")
    return found


def _free_port() -> int:
    # sshd needs an explicit port: the kernel picks a free one, released just before sshd binds.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH server on 127.0.0.1 that lets the current user in with a fresh key."""
    sshd_bin = _require("sshd")
    keygen = _require("ssh-keygen")
    _require("ssh")
    folder = tmp_path / "sshd"
    folder.mkdir()
    folder.chmod(0o700)
    host_key = folder / "host_ed25519"
    client_key = folder / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nLogLevel INFO\n"
    )
    process = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        # sshd logs "Server listening on 127.0.0.1 port N." once bound: the readiness signal.
        said: list[str] = []
        for line in process.stderr:
            if "Server listening on" in line:
                break
            said.append(line.strip())
        else:
            pytest.fail(
                f"sshd did not start (exit {process.wait()}): {' / '.join(said[-5:])}"
                " (make test creates /run/sshd and installs openssh-server when run as root)"
            )
        yield SshServer(port, getpass.getuser(), client_key)
    finally:
        process.terminate()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
