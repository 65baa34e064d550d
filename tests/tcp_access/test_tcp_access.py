"""TCP applications through the edge: policy on the WebSocket upgrade, bytes relayed raw, and
a real OpenSSH session through ``ProxyCommand tunnelgate access tcp``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trio

from connector.access_client import (
    AccessRefused,
    EdgeTarget,
    open_tcp_websocket,
    serve_local_listener,
)

from .conftest import ECHO_HOST, SIGNAL_TIMEOUT, SSH_HOST, SshServer, start_deployment

pytestmark = pytest.mark.e2e

TUNNELGATE = str(Path(sys.executable).with_name("tunnelgate"))


async def test_echo_through_a_local_listener_for_an_allowed_service_token(
    nursery: trio.Nursery, tmp_path: Path, echo_port: int
) -> None:
    deployment = await start_deployment(
        nursery, tmp_path / "edge", {ECHO_HOST: f"tcp://127.0.0.1:{echo_port}"}
    )
    allowed = deployment.allowed
    target = EdgeTarget(ECHO_HOST, deployment.edge_url, allowed.client_id, allowed.secret)
    port: int = await nursery.start(serve_local_listener, target, "127.0.0.1", 0)
    with trio.fail_after(SIGNAL_TIMEOUT):
        async with await trio.open_tcp_stream("127.0.0.1", port) as local:
            for line in (b"hello tcp\n", b"second line\n"):
                await local.send_all(line)
                received = b""
                while len(received) < len(line):
                    received += await local.receive_some(1024)
                assert received == line.upper()
    decisions = await deployment.decisions("tcp0")
    assert any(d["action"] == "service_auth" and d["service_token"] == "allowed"
               for d in decisions), decisions


async def test_a_denied_service_token_gets_no_tcp_stream(
    nursery: trio.Nursery, tmp_path: Path, echo_port: int
) -> None:
    deployment = await start_deployment(
        nursery, tmp_path / "edge", {ECHO_HOST: f"tcp://127.0.0.1:{echo_port}"}
    )
    denied = deployment.denied
    with trio.fail_after(SIGNAL_TIMEOUT):
        with pytest.raises(AccessRefused) as refused:
            await open_tcp_websocket(
                EdgeTarget(ECHO_HOST, deployment.edge_url, denied.client_id, denied.secret)
            )
        assert refused.value.status == 403
        with pytest.raises(AccessRefused) as anonymous:
            await open_tcp_websocket(EdgeTarget(ECHO_HOST, deployment.edge_url))
        assert anonymous.value.status in (302, 401)
        # Through the local listener the connection is accepted, then closed without data.
        target = EdgeTarget(ECHO_HOST, deployment.edge_url, denied.client_id, denied.secret)
        port: int = await nursery.start(serve_local_listener, target, "127.0.0.1", 0)
        async with await trio.open_tcp_stream("127.0.0.1", port) as local:
            await local.send_all(b"let me in\n")
            try:
                answer = await local.receive_some(1024)
            except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                answer = b""
            assert answer == b""
    decisions = await deployment.decisions("tcp0")
    assert any(d["action"] == "deny" and d["service_token"] == "denied" for d in decisions), \
        decisions


def _ssh_command(edge_url: str, client_id: str, secret_file: Path, server: SshServer,
                 *remote: str) -> list[str]:
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.fail("ssh is missing: apt-get install openssh-server openssh-client")
    proxy = (f"{TUNNELGATE} access tcp --hostname %h --edge-url {edge_url} "
             f"--service-token-id {client_id} --service-token-secret-file {secret_file}")
    return [
        ssh, "-F", "/dev/null", "-o", f"ProxyCommand={proxy}",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
        "-i", str(server.client_key), "-p", "22", f"{server.user}@{SSH_HOST}", *remote,
    ]


async def test_real_ssh_through_proxycommand_allowed_and_denied(
    nursery: trio.Nursery, tmp_path: Path, sshd: SshServer
) -> None:
    deployment = await start_deployment(
        nursery, tmp_path / "edge", {SSH_HOST: f"ssh://127.0.0.1:{sshd.port}"}
    )
    allowed, denied = deployment.allowed, deployment.denied
    with trio.fail_after(60):
        ok = await trio.run_process(
            _ssh_command(deployment.edge_url, allowed.client_id, allowed.secret_file, sshd,
                         "echo", "through-the-tunnel", "&&", "whoami"),
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout.decode().split() == ["through-the-tunnel", sshd.user]

    with trio.fail_after(60):
        refused = await trio.run_process(
            _ssh_command(deployment.edge_url, denied.client_id, denied.secret_file, sshd,
                         "true"),
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert refused.returncode != 0
    assert b"refused access (403)" in refused.stderr, refused.stderr.decode()
    decisions = await deployment.decisions("tcp0")
    assert any(d["action"] == "deny" and d["service_token"] == "denied" for d in decisions), \
        decisions
    assert any(d["action"] == "service_auth" and d["service_token"] == "allowed"
               for d in decisions), decisions


