"""`tunnelgate tunnel run` loads no library it does not use, so an idle connector stays small.

httpx (admin API, Access key sets), PyJWT with cryptography (Access assertions) and
prometheus_client (``--metrics``) together are over a quarter of an idle connector's memory.
Each test runs the real command in a fresh interpreter against an edge that refuses the
credential (HTTP 401, so the connector exits 3 on its own) and reads ``sys.modules`` after it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

from connector.config import Credentials, write_credentials

ON_DEMAND = ("httpx", "jwt", "cryptography", "prometheus_client")
EXIT_PERMANENT = 3

RUN_AND_REPORT = """
import json, sys
from connector.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
loaded = sorted(name for name in {names!r} if name in sys.modules)
print(json.dumps({{"exit": code, "loaded": loaded}}))
"""


async def refuse_upgrade(stream: trio.SocketStream) -> None:
    """An edge that answers every tunnel upgrade with 401 (tunnel deleted)."""
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            request += chunk
        await stream.send_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")


async def run_connector_until_refused(nursery: trio.Nursery, tmp_path: Path,
                                      *extra: str) -> dict[str, object]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, refuse_upgrade, listeners)
    port = listeners[0].socket.getsockname()[1]
    credentials = tmp_path / "tunnel.json"
    write_credentials(credentials, Credentials("0b6f2a54-4d5e-4d43-9a33-5a4bb0f3f0d1", "idle",
                                               "s3cret", f"ws://127.0.0.1:{port}"))
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("TUNNELGATE_")}
    env["HOME"] = str(tmp_path)
    result = await trio.run_process(
        [sys.executable, "-c", RUN_AND_REPORT.format(names=ON_DEMAND), "tunnel", "run",
         "--credentials-file", str(credentials), "--url", "http://127.0.0.1:9", *extra],
        capture_stdout=True, capture_stderr=True, check=False, env=env)
    lines = result.stdout.decode().strip().splitlines()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert lines, result.stderr.decode()[-2000:]
    report: dict[str, object] = json.loads(lines[-1])
    assert report["exit"] == EXIT_PERMANENT, result.stderr.decode()[-2000:]
    return report


@pytest.mark.e2e
async def test_run_without_metrics_loads_no_on_demand_library(nursery: trio.Nursery,
                                                              tmp_path: Path) -> None:
    report = await run_connector_until_refused(nursery, tmp_path)
    assert report["loaded"] == []


@pytest.mark.e2e
async def test_run_with_metrics_loads_only_prometheus_client(nursery: trio.Nursery,
                                                             tmp_path: Path) -> None:
    report = await run_connector_until_refused(nursery, tmp_path, "--metrics", "127.0.0.1:0")
    assert report["loaded"] == ["prometheus_client"]
