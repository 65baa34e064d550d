"""`make demo`: an edge, a connector and a sample origin on loopback, driven by the real CLI.

Every step is a command an operator would type; the script only starts them in order, waits
for each to say it is ready, prints the URL to open, and stops everything on Ctrl-C.
The store lives in ./demo-data so a second run reuses the tunnel and its credentials.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATA = ROOT / "demo-data"
HOSTNAME = "hello.localhost"


def run(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(str(a) for a in args), flush=True)
    return subprocess.run(list(args), check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def start(args: Sequence[str], name: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """Start a long-running command and wait for its one-line JSON ready message on stdout."""
    print("$", " ".join(str(a) for a in args), "&", flush=True)
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("event") == "ready":
            return proc, message
    raise SystemExit(f"demo: {name} exited before it was ready (exit code {proc.wait()})")


def free_port(preferred: int) -> int:
    """The demo's public port must be known before the edge starts (it is in the auth domain)."""
    for candidate in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise SystemExit("demo: no free loopback port")


def main() -> int:
    DATA.mkdir(exist_ok=True)
    edge_bin, cli_bin = str(BIN / "tunnelgate-edge"), str(BIN / "tunnelgate")
    config = DATA / "edge.toml"
    if not config.exists():
        port = free_port(8080)
        run([edge_bin, "init", "--dir", str(DATA), "--public-listen", f"127.0.0.1:{port}",
             "--tunnel-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--ops-listen", "127.0.0.1:0", "--auth-domain", f"auth.localhost:{port}"],
            stdout=subprocess.DEVNULL)
    procs: list[subprocess.Popen[str]] = []
    try:
        origin, origin_ready = start([sys.executable, str(ROOT / "demo" / "origin.py")], "origin")
        procs.append(origin)
        edge, edge_ready = start([edge_bin, "serve", "--config", str(config)], "edge")
        procs.append(edge)
        listeners = edge_ready["listeners"]
        assert isinstance(listeners, dict)
        api = ["--api", f"http://{listeners['admin']}",
               "--api-token-file", str(DATA / "admin.token")]
        creds = DATA / "demo-tunnel.json"
        if not creds.exists():
            run([cli_bin, *api, "tunnel", "create", "demo", "--credentials-file", str(creds)])
            run([cli_bin, *api, "tunnel", "route", "demo", HOSTNAME])
        # Idempotent: the sample origin sits behind a one-time PIN login (demo/access.toml).
        run([edge_bin, "apply", *api, str(ROOT / "demo" / "access.toml")])
        connector, _ = start([cli_bin, "tunnel", "run", "--credentials-file", str(creds),
                              "--edge", f"ws://{listeners['tunnel']}",
                              "--url", f"http://{origin_ready['listen']}",
                              ], "connector")
        procs.append(connector)
        port = str(listeners["public"]).rsplit(":", 1)[1]
        print(f"\n  Open http://{HOSTNAME}:{port}/ and sign in with any e-mail address: the\n"
              "  one-time code appears in this terminal (tunnelgate.otp). Ctrl-C stops the demo.\n",
              flush=True)
        while all(proc.poll() is None for proc in procs):
            signal.pause()
        print("demo: a process exited; stopping the others", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wake pause() when a child exits
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
