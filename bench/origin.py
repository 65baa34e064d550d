"""The origins every target forwards to: one nginx for HTTP, one small trio server for WebSockets.

nginx is the fixed, fast HTTP origin (so that it is never the bottleneck); it runs from a
configuration rendered into the run's temporary directory, not from /etc/nginx. nginx cannot hold
WebSocket connections as an endpoint, so the WebSocket rows use `ws_origin.py`, which accepts
upgrades, echoes messages and otherwise keeps connections open.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from load import Endpoint, probe_status
from processes import BenchError, ManagedProcess, ProcessGroup, free_port, wait_until

BENCH_DIR = Path(__file__).resolve().parent
SMALL_BODY = ("tunnelgate bench " * 6)[:99] + "."  # exactly 100 bytes
DOWNLOAD_BYTES = 64 * 1024 * 1024
READY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Origins:
    nginx: ManagedProcess
    nginx_port: int
    payload_path: Path  # the 64 MiB file, served as /64m and used as the upload body
    upload_dir: Path
    websocket: ManagedProcess
    websocket_port: int

    @property
    def http_endpoint(self) -> Endpoint:
        return Endpoint(self.nginx_port, None)


def start_nginx(group: ProcessGroup, workdir: Path) -> tuple[ManagedProcess, int, Path, Path]:
    prefix = workdir / "nginx"
    www = prefix / "www"
    upload_dir = www / "upload"
    for directory in (www, upload_dir, prefix / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    payload = www / "64m"
    with payload.open("wb") as out:
        # Random bytes, so that no layer can compress the transfer rows into meaninglessness.
        for _ in range(DOWNLOAD_BYTES // (1 << 20)):
            out.write(os.urandom(1 << 20))
    port = free_port()
    template = string.Template((BENCH_DIR / "nginx.conf.template").read_text())
    config = prefix / "nginx.conf"
    config.write_text(
        template.substitute(
            prefix=prefix,
            port=port,
            small_body=SMALL_BODY,
            user=getpass.getuser(),
            group=grp.getgrgid(os.getgid()).gr_name,
        ),
    )
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx = group.start("nginx", [executable, "-p", str(prefix), "-c", str(config)])
    endpoint = Endpoint(port, None)
    wait_until(
        lambda: probe_status(endpoint, "/small") == 200,
        timeout_s=READY_TIMEOUT_S,
        what="nginx origin",
        watch=[nginx],
    )
    return nginx, port, payload, upload_dir


def start_websocket_origin(group: ProcessGroup) -> tuple[ManagedProcess, int]:
    origin = group.start(
        "ws-origin", [sys.executable, str(BENCH_DIR / "ws_origin.py")], cwd=BENCH_DIR
    )
    ports: list[int] = []

    def announced() -> bool:
        for line in origin.stdout_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("event") == "ready":
                ports.append(int(event["port"]))
                return True
        return False

    wait_until(announced, timeout_s=READY_TIMEOUT_S, what="WebSocket origin", watch=[origin])
    return origin, ports[0]


def start_origins(group: ProcessGroup, workdir: Path) -> Origins:
    nginx, nginx_port, payload, upload_dir = start_nginx(group, workdir)
    websocket, websocket_port = start_websocket_origin(group)
    return Origins(nginx, nginx_port, payload, upload_dir, websocket, websocket_port)


def check_uploaded(origins: Origins, name: str) -> None:
    """Raise unless nginx stored the whole upload: proof that the body really crossed."""
    stored = origins.upload_dir / name
    size = stored.stat().st_size if stored.exists() else -1
    if size != DOWNLOAD_BYTES:
        raise BenchError(f"upload incomplete: origin stored {size} of {DOWNLOAD_BYTES} bytes")
    stored.unlink()
