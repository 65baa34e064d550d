"""Instructions per request of the edge and the connector, counted by callgrind.

Why: on a shared 2-core VM the CPU time of the same build under the same load moves by up to
30% from one minute to the next, which hides a 5% change; the number of instructions the two
processes execute per request repeats within about 1%. This is how each change of the third
round in bench/README.md was measured.

    .venv/bin/python bench/instructions.py                       # tunnelgate + Access
    .venv/bin/python bench/instructions.py --target tunnelgate   # no Access app
    .venv/bin/python bench/instructions.py --close               # Connection: close
    .venv/bin/python bench/instructions.py --download 2          # per 64 MiB download (curl)

It sets the target up exactly as bench/run.py does (the products' own command lines, nginx as
the origin), restarts its edge and connector under ``valgrind --tool=callgrind
--instr-atstart=no`` with the same arguments, waits for the route to answer, warms up for a few
seconds, switches instrumentation on with ``callgrind_control -i on`` for a ``wrk -t1`` load,
off again, and divides each process's instruction total by the requests wrk completed. With
``--download`` the load is instead a few 64 MiB downloads by curl, one after the other, and the
totals are divided by the downloads (the bulk path: body pieces, frames, masking). It prints one
JSON line. User-space instructions only: the kernel's share (system calls, loopback
TCP) is not in it.

Under valgrind the processes run about fifty times slower, so every scheduling round serves
many requests at once: the counts describe fully batched traffic. Compare builds with them (the
same options, one after the other); do not read latency or throughput into them.

Needs valgrind (``apt-get install valgrind``) besides what bench/run.py needs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from load import Endpoint, curl_download, probe_status
from origin import DOWNLOAD_BYTES, start_origins
from processes import BenchError, ManagedProcess, ProcessGroup, wait_until
from targets import RunContext, Tunnelgate, TunnelgateAccess

WARM_UP_S = 3
READY_TIMEOUT_S = 300.0  # the processes start slowly under valgrind


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["tunnelgate", "tunnelgate-access"],
                        default="tunnelgate-access")
    parser.add_argument("--close", action="store_true", help="send Connection: close")
    parser.add_argument("--download", type=int, metavar="N", default=0,
                        help="count N 64 MiB downloads instead of a wrk load")
    parser.add_argument("--seconds", type=int, default=15, help="length of the counted load")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    arguments = parser.parse_args(argv)
    if arguments.download and arguments.close:
        parser.error("--close shapes the wrk load; --download replaces it")
    return arguments


def instruction_total(files: list[Path]) -> int:
    """Instructions in callgrind's dumps (each dump holds what ran since the one before)."""
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total


def _instrument(processes: Iterable[ManagedProcess], switch: str) -> None:
    """Instrumentation on or off in each process; off also dumps what was counted."""
    for process in processes:
        subprocess.run(["callgrind_control", "-i", switch, str(process.pid)],
                       capture_output=True, check=True)
        if switch == "off":
            subprocess.run(["callgrind_control", "-d", str(process.pid)],
                           capture_output=True, check=True)


def count_small_requests(endpoint: Endpoint, arguments: argparse.Namespace,
                         processes: Iterable[ManagedProcess]) -> int:
    """A wrk load counted after a warm-up; the requests it completed."""
    headers = [f"Host: {endpoint.host_header}", *endpoint.headers]
    if arguments.close:
        headers.append("Connection: close")
    wrk = ["wrk", "-t1", f"-c{arguments.connections}"]
    for header in headers:
        wrk += ["-H", header]
    url = endpoint.url("/small")
    subprocess.run([*wrk, f"-d{WARM_UP_S}s", url], capture_output=True, check=True)
    _instrument(processes, "on")
    load = subprocess.run([*wrk, f"-d{arguments.seconds}s", url],
                          capture_output=True, text=True, check=True)
    _instrument(processes, "off")
    found = re.search(r"(\d+) requests in", load.stdout)
    if found is None or "Non-2xx" in load.stdout:
        raise BenchError(f"the load did not complete cleanly: {load.stdout[-300:]}")
    return int(found.group(1))


def count_downloads(endpoint: Endpoint, downloads: int,
                    processes: Iterable[ManagedProcess]) -> int:
    """``downloads`` whole 64 MiB downloads counted after one uncounted one."""
    curl_download(endpoint, "/64m", DOWNLOAD_BYTES)
    _instrument(processes, "on")
    for _ in range(downloads):
        curl_download(endpoint, "/64m", DOWNLOAD_BYTES)  # raises unless every byte came
    _instrument(processes, "off")
    return downloads


def measure(arguments: argparse.Namespace, workdir: Path) -> dict[str, object]:
    group = ProcessGroup(workdir / "logs")
    with group.running():
        context = RunContext(group, workdir, start_origins(group, workdir), Path(sys.prefix) / "bin")
        target = (TunnelgateAccess if arguments.target == "tunnelgate-access" else Tunnelgate)(
            arguments.target, arguments.target
        )
        target.setup(context)
        endpoint = target.endpoint
        restarted = {}
        for role, process in (("edge", target.edge), ("connector", target.connector)):
            assert process is not None
            group.stop(process)
            out = workdir / f"{role}.callgrind"
            restarted[role] = (out, group.start(f"{role}-callgrind", [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", *process.argv,
            ]))
        wait_until(lambda: probe_status(endpoint, "/small") == 200, timeout_s=READY_TIMEOUT_S,
                   what="the route under valgrind", watch=[p for _, p in restarted.values()])
        processes = [process for _, process in restarted.values()]
        if arguments.download:
            requests = count_downloads(endpoint, arguments.download, processes)
            unit = "download"
        else:
            requests = count_small_requests(endpoint, arguments, processes)
            unit = "request"
        for _, process in restarted.values():
            group.stop(process)
        result: dict[str, object] = {"target": arguments.target}
        if not arguments.download:  # the wrk load's shape; a download has none of it
            result["connection_close"] = arguments.close
            result["connections"] = arguments.connections
        result[f"{unit}s"] = requests
        for role, (out, _) in restarted.items():
            files = sorted(out.parent.glob(out.name + "*"))
            result[f"{role}_instructions_per_{unit}"] = round(instruction_total(files) / requests)
        return result


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk", "nginx")
               if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if missing:
        sys.stderr.write(f"missing: {' '.join(missing)}; install with: apt-get install valgrind "
                         "wrk nginx (or run bench/setup.sh as root)\n")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="tunnelgate-instructions-",
                                    dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        print(json.dumps(measure(arguments, workdir)))
    except BenchError as error:
        sys.stderr.write(f"instructions: {error}\n")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
