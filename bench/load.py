"""Load generators: wrk (request rate, saturated latency), h2load (fixed-rate latency), curl (bulk).

Each runner starts the tool with a hard timeout, parses its machine-readable output and refuses a
result that is not a measurement: a run with more than 1% failed or non-2xx requests, a transfer
of the wrong size, or a status the origin would never send raises `BenchError` with the reason,
which the results then show instead of a number.

Method notes (also in bench/README.md):
- wrk latency is measured from send to complete response; under saturation it includes queueing.
- Fixed-rate latency uses h2load `--rps` (wrk2 is not packaged in Debian): each of the clients
  sends at `rate / clients` requests per second, and every request's time is read from h2load's
  `--log-file`, so p99.9 is exact rather than interpolated. h2load does not correct for
  coordinated omission; at half the maximum rate queueing is rare, which is why that rate is used.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from processes import BenchError, meaningful_tail

MAX_ERROR_FRACTION = 0.01
MB = 1_000_000  # MB/s in the results are 10^6 bytes per second
TOOL_GRACE_S = 30.0

WRK_REPORT_LUA = """\
-- Print wrk's summary as one JSON line, including p99.9 that --latency does not show.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, " ..
    "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, " ..
    "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"p999_us\\": %d, " ..
    "\\"max_us\\": %d, \\"mean_us\\": %.1f}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class Endpoint:
    """Where load goes: a loopback port, and the Host header the route needs (None: default)."""

    port: int
    host_header: str | None
    # "Name: value" headers every request carries besides Host, e.g. an Access session cookie.
    headers: tuple[str, ...] = ()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def header_args(self, flag: str = "-H") -> list[str]:
        """Host (when the route needs one) and the extra headers, as command-line options."""
        host = [flag, f"Host: {self.host_header}"] if self.host_header else []
        return host + [part for header in self.headers for part in (flag, header)]

    def header_pairs(self) -> dict[str, str]:
        pairs = dict(header.split(": ", 1) for header in self.headers)
        return {"Host": self.host_header, **pairs} if self.host_header else pairs


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


@dataclass(frozen=True)
class RateResult:
    target_rate: float
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float


def probe_status(endpoint: Endpoint, path: str) -> int | None:
    """One GET; the status, or None when nothing answered."""
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=3.0)
    try:
        connection.request("GET", path, headers=endpoint.header_pairs())
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def probe_websocket(endpoint: Endpoint, path: str) -> bool:
    """True when a WebSocket upgrade through `endpoint` is answered with 101."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    host = endpoint.host_header or f"127.0.0.1:{endpoint.port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(f"{header}\r\n" for header in endpoint.headers)
        + "\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=3.0) as sock:
            sock.sendall(request.encode())
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.1 101")


def _run_tool(argv: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"{argv[0]} did not finish within {timeout_s:.0f} s") from error
    if done.returncode != 0:
        tail = meaningful_tail(done.stderr or done.stdout)
        raise BenchError(f"{argv[0]} exited with code {done.returncode}: {tail}")
    return done.stdout


def write_wrk_script(workdir: Path) -> Path:
    path = workdir / "wrk_report.lua"
    path.write_text(WRK_REPORT_LUA)
    return path


def run_wrk(
    endpoint: Endpoint,
    path: str,
    *,
    lua_script: Path,
    threads: int,
    connections: int,
    seconds: float,
    close: bool = False,
) -> WrkResult:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua_script),
        *endpoint.header_args(),
        *(["-H", "Connection: close"] if close else []),
        endpoint.url(path),
    ]
    output = _run_tool(argv, seconds + TOOL_GRACE_S)
    lines = [line for line in output.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise BenchError("wrk printed no summary")
    summary = json.loads(lines[-1].removeprefix("WRK_JSON "))
    requests = int(summary["requests"])
    errors = sum(int(summary[k]) for k in ("connect", "read", "write", "status", "timeout"))
    if requests == 0:
        raise BenchError(f"wrk completed no request ({errors} errors)")
    if errors > MAX_ERROR_FRACTION * requests:
        detail = ", ".join(
            f"{k} {summary[k]}" for k in ("connect", "read", "write", "status", "timeout")
        )
        raise BenchError(f"{errors} errors in {requests} requests ({detail})")
    return WrkResult(
        requests_per_s=requests / (int(summary["duration_us"]) / 1e6),
        requests=requests,
        errors=errors,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        p999_ms=summary["p999_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
    )


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def run_h2load_rate(
    endpoint: Endpoint,
    path: str,
    *,
    workdir: Path,
    rate: float,
    clients: int,
    seconds: float,
) -> RateResult:
    log_path = workdir / "h2load-requests.tsv"
    with contextlib.suppress(FileNotFoundError):
        log_path.unlink()
    per_client = rate / clients
    argv = [
        "h2load",
        "--h1",
        "-t2",
        f"-c{clients}",
        f"--rps={per_client:.3f}",
        f"-D{max(1, round(seconds))}",
        f"--log-file={log_path}",
        # h2load sends the URL's authority as Host; overriding `host` would duplicate it.
        *([f"-H:authority: {endpoint.host_header}"] if endpoint.host_header else []),
        *[part for header in endpoint.headers for part in ("-H", header)],
        endpoint.url(path),
    ]
    output = _run_tool(argv, seconds + TOOL_GRACE_S)
    durations: list[float] = []
    failures = 0
    for row in log_path.read_text().splitlines():
        columns = row.split("\t")
        if len(columns) < 3:
            continue
        if not columns[1].startswith("2"):
            failures += 1
        durations.append(int(columns[2]) / 1000)
    log_path.unlink()
    if not durations:
        raise BenchError(f"h2load completed no request: {output.strip().splitlines()[-4:]}")
    failed_line = next((line for line in output.splitlines() if line.startswith("requests:")), "")
    if failures > MAX_ERROR_FRACTION * len(durations):
        raise BenchError(f"{failures} non-2xx of {len(durations)} requests ({failed_line})")
    durations.sort()
    return RateResult(
        target_rate=rate,
        achieved_rate=len(durations) / max(1, round(seconds)),
        p50_ms=percentile(durations, 0.50),
        p99_ms=percentile(durations, 0.99),
        p999_ms=percentile(durations, 0.999),
    )


def _curl_transfer(argv: list[str], expected_bytes: int, ok_statuses: set[int]) -> float:
    output = _run_tool(argv, 300.0).split()
    status, size, total_s = int(output[0]), int(output[1]), float(output[2])
    if status not in ok_statuses:
        raise BenchError(f"curl got HTTP {status}")
    if size != expected_bytes:
        raise BenchError(f"curl moved {size} of {expected_bytes} bytes")
    return size / total_s / MB


def curl_download(endpoint: Endpoint, path: str, expected_bytes: int) -> float:
    """Download `path` to /dev/null; MB/s over the whole transfer (connect included)."""
    argv = [
        "curl",
        "-sS",
        "--max-time",
        "240",
        "-o",
        os.devnull,
        "-w",
        "%{http_code} %{size_download} %{time_total}",
        *endpoint.header_args(),
        endpoint.url(path),
    ]
    return _curl_transfer(argv, expected_bytes, {200})


def curl_upload(endpoint: Endpoint, path: str, source: Path) -> float:
    """PUT `source` to `path`; MB/s over the whole transfer, the origin's answer included.

    `Expect:` is sent empty so that no row depends on how long a hop takes to answer
    `100-continue` (curl would otherwise wait up to a second for it).
    """
    argv = [
        "curl",
        "-sS",
        "--max-time",
        "240",
        "-T",
        str(source),
        "-H",
        "Expect:",
        "-o",
        os.devnull,
        "-w",
        "%{http_code} %{size_upload} %{time_total}",
        *endpoint.header_args(),
        endpoint.url(path),
    ]
    return _curl_transfer(argv, source.stat().st_size, {200, 201, 204})
