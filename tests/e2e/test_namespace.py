"""The point of the product: the origin sits where the edge cannot reach it, and requests
still get there because the connector dials out.

The origin and the connector run in their own network namespace. Its only link is a veth pair
to the edge's namespace, addressed from 169.254.0.0/16: link-local, so the test claims no
private-network range (10/8, 172.16/12, 192.168/16) that the machine may already use, and,
unlike 127.0.0.0/8, it is routable over a veth. The namespace gets no default route, only the
/30 of the link: an outbound path to the edge and nothing else. The origin listens on the
namespace's own 127.0.0.1, which no other namespace can address.

Needs root and iproute2 (CI runs as root); without them the test fails and says so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from connector.config import write_credentials

from .conftest import EdgeFactory
from .processes import CONNECTOR_BIN, ORIGIN_SCRIPT, child_process
from .visitor import fetch, open_connection

pytestmark = pytest.mark.e2e

HANG_GUARD = 60.0
HOST = "private.example.test"


@dataclass(frozen=True)
class NetworkNamespace:
    name: str
    host_address: str  # the edge's end of the veth, in this (root) namespace
    inner_address: str  # the namespace's end

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@pytest.fixture
def namespace() -> Iterator[NetworkNamespace]:
    if shutil.which("ip") is None:
        pytest.fail("the namespace test needs iproute2's `ip` command: apt-get install iproute2")
    if os.geteuid() != 0:
        pytest.fail("the namespace test must run as root (CI does): it creates a network "
                    "namespace and a veth pair with `ip`")
    suffix = secrets.token_hex(4)
    name, host_if, inner_if = f"tg-{suffix}", f"tgh{suffix}", f"tgn{suffix}"
    third, fourth = secrets.randbelow(254) + 1, secrets.randbelow(64) * 4
    host_address, inner_address = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
    try:
        run_ip("netns", "add", name)
        run_ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if)
        run_ip("link", "set", inner_if, "netns", name)
        run_ip("addr", "add", f"{host_address}/30", "dev", host_if)
        run_ip("link", "set", host_if, "up")
        run_ip("-n", name, "addr", "add", f"{inner_address}/30", "dev", inner_if)
        run_ip("-n", name, "link", "set", inner_if, "up")
        run_ip("-n", name, "link", "set", "lo", "up")
        yield NetworkNamespace(name, host_address, inner_address)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"setting up the network namespace failed: {error.cmd}: {error.stderr}")
    finally:
        run_ip("netns", "delete", name, check=False)  # takes the veth pair with it
        run_ip("link", "delete", host_if, check=False)


async def connect_fails_or_is_not(address: str, tag: str) -> bool:
    """True when `address` refuses us, or answers but is not the origin tagged `tag`."""
    try:
        with trio.fail_after(10):
            stream = await open_connection(address)
    except (OSError, trio.TooSlowError):
        return True
    async with stream:
        try:
            with trio.fail_after(10):
                await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.TooSlowError):
            return True
    return tag.encode() not in answer


async def test_requests_reach_an_origin_the_edge_cannot_connect_to(
    tmp_path: Path, namespace: NetworkNamespace, edge_factory: EdgeFactory
) -> None:
    edge = await edge_factory(tunnel=f"{namespace.host_address}:0")
    credentials = edge.create_tunnel("private", HOST)
    credentials_file = tmp_path / "private.json"
    write_credentials(credentials_file, credentials)
    tag = f"inside-{namespace.name}"

    routes = run_ip("-n", namespace.name, "-4", "route", "show").stdout.strip().splitlines()
    assert len(routes) == 1, routes  # only the link's /30: no default route out
    assert routes[0].startswith(f"{namespace.host_address.rsplit('.', 1)[0]}.")

    with trio.fail_after(HANG_GUARD):
        async with child_process(
            namespace.exec_args(sys.executable, ORIGIN_SCRIPT, "--listen", "127.0.0.1:0",
                                "--tag", tag),
            name="origin", log_dir=tmp_path,
        ) as origin:
            origin_port = origin.ready["listen"].rsplit(":", 1)[1]
            # (a) The edge's namespace cannot connect to the origin: not through the veth...
            assert await connect_fails_or_is_not(f"{namespace.inner_address}:{origin_port}", tag)
            # ...and 127.0.0.1 here is this namespace's own loopback, not the origin's.
            assert await connect_fails_or_is_not(f"127.0.0.1:{origin_port}", tag)

            async with child_process(
                namespace.exec_args(
                    CONNECTOR_BIN, "tunnel", "run", "--credentials-file", str(credentials_file),
                    "--url", f"http://127.0.0.1:{origin_port}",
                    "--edge", f"ws://{edge.runtime.listeners['tunnel']}",
                    "--ha-connections", "2"),
                name="connector", log_dir=tmp_path,
            ):
                await edge.wait_connections(credentials.tunnel_id, 2)
                # The connections came from inside the namespace, over the veth.
                clients = {c.client for c in edge.runtime.registry.connections(
                    credentials.tunnel_id)}
                assert clients == {namespace.inner_address}
                # (b) ...and yet a request through the edge reaches the origin.
                response = await fetch(edge.public, HOST, "/hello")
                assert response.status == 200, response.text
                assert response.json()["tag"] == tag
                for index in range(5):
                    item = await fetch(edge.public, HOST, f"/item/{index}")
                    assert (item.status, item.body) == (200, f"item {index}".encode())
