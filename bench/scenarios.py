"""The benchmark scenarios, run against every usable target in the same run.

Repeated rows are interleaved: run 1 of every target, then run 2 of every target, and so on, so
that a slow minute of the machine does not land on one target only. A measurement that fails
(tool error, more than 1% failed requests, a truncated transfer, a target process that died) is
recorded with its reason and the run moves on.

Scenario ids (also the names `--only` accepts): rss, keepalive, close, transfer, latency, hol,
websockets. A target that declares the scenarios it takes part in (`Target.scenarios`) is left
out of the others entirely: no run, no failure, no row.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from load import (
    MB,
    Endpoint,
    RateResult,
    WrkResult,
    curl_download,
    curl_upload,
    run_h2load_rate,
    run_wrk,
)
from origin import DOWNLOAD_BYTES, check_uploaded
from processes import BenchError, ManagedProcess, wait_until
from targets import RunContext, Target

BENCH_DIR = Path(__file__).resolve().parent
RSS_SAMPLE_INTERVAL_S = 0.1
HOL_MAX_DOWNLOADS = 1000
WS_OPEN_TIMEOUT_S = 300.0
MIB = 1024.0


@dataclass(frozen=True)
class Metric:
    key: str
    scenario: str
    title: str
    unit: str
    higher_is_better: bool


SCENARIOS = ("rss", "keepalive", "close", "transfer", "latency", "hol", "websockets")

METRICS = (
    Metric("keepalive_c32_rps", "keepalive", "small GET, keep-alive, wrk -t2 -c32", "req/s", True),
    Metric("keepalive_c32_p99_ms", "keepalive", "p99 of the -c32 run (saturated)", "ms", False),
    Metric(
        "keepalive_c256_rps", "keepalive", "small GET, keep-alive, wrk -t2 -c256", "req/s", True
    ),
    Metric("keepalive_c256_p99_ms", "keepalive", "p99 of the -c256 run (saturated)", "ms", False),
    Metric("close_c32_rps", "close", "small GET, Connection: close, -t2 -c32", "req/s", True),
    Metric("close_c256_rps", "close", "small GET, Connection: close, -t2 -c256", "req/s", True),
    Metric("download_mbps", "transfer", "64 MiB download (curl)", "MB/s", True),
    Metric("upload_mbps", "transfer", "64 MiB upload (curl -T, PUT)", "MB/s", True),
    Metric("fixed_rate_rps", "latency", "fixed rate: half of keep-alive -c32", "req/s", True),
    Metric("fixed_p50_ms", "latency", "p50 at the fixed rate (h2load -c32)", "ms", False),
    Metric("fixed_p99_ms", "latency", "p99 at the fixed rate", "ms", False),
    Metric("fixed_p999_ms", "latency", "p99.9 at the fixed rate", "ms", False),
    Metric("hol_idle_p99_ms", "hol", "small GET p99, wrk -t1 -c8, idle tunnel", "ms", False),
    Metric(
        "hol_loaded_p99_ms", "hol", "small GET p99, -c8, while 64 MiB downloads run", "ms", False
    ),
    Metric("hol_p99_growth", "hol", "loaded p99 / idle p99 (target <= 2)", "x", False),
    Metric("hol_background_mbps", "hol", "download rate beside the loaded probe", "MB/s", True),
    Metric("ws_held", "websockets", "idle WebSocket streams held", "streams", True),
    Metric("ws_connector_kib_per_stream", "websockets", "connector RSS per stream", "KiB", False),
    Metric("ws_edge_kib_per_stream", "websockets", "edge RSS per stream", "KiB", False),
    Metric("ws_connector_rss_before_mib", "websockets", "connector RSS before", "MiB", False),
    Metric("ws_connector_rss_after_mib", "websockets", "connector RSS with streams", "MiB", False),
    Metric("ws_edge_rss_before_mib", "websockets", "edge RSS before", "MiB", False),
    Metric("ws_edge_rss_after_mib", "websockets", "edge RSS with streams", "MiB", False),
    Metric("rss_connector_idle_mib", "rss", "connector RSS, idle", "MiB", False),
    Metric(
        "rss_connector_load_mib", "rss", "connector RSS, peak under load 1 (-c32)", "MiB", False
    ),
    Metric("rss_edge_idle_mib", "rss", "edge RSS, idle", "MiB", False),
    Metric("rss_edge_load_mib", "rss", "edge RSS, peak under load 1 (-c32)", "MiB", False),
)
METRIC_SCENARIO = {metric.key: metric.scenario for metric in METRICS}


@dataclass(frozen=True)
class Settings:
    runs: int
    seconds: float
    websocket_streams: int
    wrk_script: Path


@dataclass
class Recorder:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    details: dict[str, dict[str, object]] = field(default_factory=dict)

    def add(self, target: str, key: str, value: float) -> None:
        self.values.setdefault((target, key), []).append(value)

    def fail(self, target: str, keys: list[str], reason: str) -> None:
        for key in keys:
            self.failures[(target, key)] = reason

    def detail(self, target: str, key: str, value: object) -> None:
        self.details.setdefault(target, {})[key] = value

    def median(self, target: str, key: str) -> float | None:
        values = self.values.get((target, key))
        return statistics.median(values) if values else None


class RssSampler:
    """Peak tree RSS of a target's processes while a load runs (polled in a thread)."""

    def __init__(self, roles: dict[str, ManagedProcess]) -> None:
        self._roles = roles
        self.peaks_kib: dict[str, int] = dict.fromkeys(roles, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for role, process in self._roles.items():
                self.peaks_kib[role] = max(self.peaks_kib[role], process.tree_rss_kib())
            self._stop.wait(RSS_SAMPLE_INTERVAL_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


class BackgroundDownloads:
    """64 MiB downloads back to back through one endpoint, bounded in count and time."""

    def __init__(self, endpoint: Endpoint, max_seconds: float) -> None:
        self._endpoint = endpoint
        self._max_seconds = max_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: subprocess.Popen[bytes] | None = None
        self.completed_bytes = 0
        self.completed_seconds = 0.0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + self._max_seconds
        downloads = 0
        argv = ["curl", "-sS", "--max-time", "120", "-o", "/dev/null"]
        argv += ["-w", "%{http_code} %{size_download}"]
        argv += [*self._endpoint.header_args(), self._endpoint.url("/64m")]
        while not self._stop.is_set() and time.monotonic() < deadline:
            if downloads >= HOL_MAX_DOWNLOADS:
                return
            downloads += 1
            started = time.monotonic()
            with self._lock:
                if self._stop.is_set():
                    return
                self._current = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                )
            output, _ = self._current.communicate()
            if self._stop.is_set():
                return
            fields = output.decode().split()
            if fields == ["200", str(DOWNLOAD_BYTES)]:
                self.completed_bytes += DOWNLOAD_BYTES
                self.completed_seconds += time.monotonic() - started
            else:
                self.errors.append(" ".join(fields) or "no answer")

    def __enter__(self) -> BackgroundDownloads:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._stop.set()
            if self._current is not None and self._current.poll() is None:
                self._current.kill()
        self._thread.join()

    def mbps(self) -> float | None:
        if not self.completed_seconds:
            return None
        return self.completed_bytes / self.completed_seconds / MB


@dataclass
class Bench:
    settings: Settings
    context: RunContext
    targets: list[Target]
    recorder: Recorder
    say: Callable[[str], None]

    def _usable(self, scenario: str) -> list[Target]:
        """The targets still running that take part in `scenario` (see Target.scenarios)."""
        return [t for t in self.targets if t.usable and t.takes_part_in(scenario)]

    def each_run(self, keys: list[str], measure: Callable[[Target], dict[str, float]]) -> None:
        """Every run of `measure` on each target taking part in the scenario of `keys`."""
        scenario = METRIC_SCENARIO[keys[0]]
        for run in range(self.settings.runs):
            for target in self._usable(scenario):
                problem = target.health()
                if problem is not None:
                    target.mark("failed", f"stopped during the run: {problem}")
                    target.shutdown(self.context.group)
                    continue
                self.say(f"  {keys[0]}: {target.name} run {run + 1}/{self.settings.runs}")
                try:
                    values = measure(target)
                except BenchError as error:
                    self.recorder.fail(target.name, keys, str(error))
                    self.say(f"    failed: {error}")
                    continue
                for key, value in values.items():
                    self.recorder.add(target.name, key, value)

    def _wrk(self, target: Target, connections: int, *, close: bool = False) -> WrkResult:
        return run_wrk(
            target.endpoint,
            "/small",
            lua_script=self.settings.wrk_script,
            threads=2,
            connections=connections,
            seconds=self.settings.seconds,
            close=close,
        )

    def _keepalive_c32_with_rss(self, target: Target) -> dict[str, float]:
        with RssSampler(target.rss_roles()) as sampler:
            result = self._wrk(target, 32)
        values = {"keepalive_c32_rps": result.requests_per_s, "keepalive_c32_p99_ms": result.p99_ms}
        for role, peak in sampler.peaks_kib.items():
            values[f"rss_{role}_load_mib"] = peak / MIB
        return values

    def rss_idle(self) -> None:
        for target in self._usable("rss"):
            for role, process in target.rss_roles().items():
                self.recorder.add(target.name, f"rss_{role}_idle_mib", process.tree_rss_kib() / MIB)

    def rss_under_load(self) -> None:
        """Load 1 on its own, for when the keep-alive rows are not selected."""
        keys = ["rss_connector_load_mib", "rss_edge_load_mib"]
        self.each_run(keys, self._keepalive_c32_with_rss)

    def keepalive(self) -> None:
        keys = ["keepalive_c32_rps", "keepalive_c32_p99_ms"]
        self.each_run(keys, self._keepalive_c32_with_rss)

        def c256(target: Target) -> dict[str, float]:
            result = self._wrk(target, 256)
            return {
                "keepalive_c256_rps": result.requests_per_s,
                "keepalive_c256_p99_ms": result.p99_ms,
            }

        self.each_run(["keepalive_c256_rps", "keepalive_c256_p99_ms"], c256)

    def close(self) -> None:
        for connections in (32, 256):
            key = f"close_c{connections}_rps"

            def measure(
                target: Target, key: str = key, connections: int = connections
            ) -> dict[str, float]:
                return {key: self._wrk(target, connections, close=True).requests_per_s}

            self.each_run([key], measure)

    def transfer(self) -> None:
        origins = self.context.origins

        def download(target: Target) -> dict[str, float]:
            return {"download_mbps": curl_download(target.endpoint, "/64m", DOWNLOAD_BYTES)}

        def upload(target: Target) -> dict[str, float]:
            name = f"{target.name}.bin"
            rate = curl_upload(target.endpoint, f"/upload/{name}", origins.payload_path)
            check_uploaded(origins, name)
            return {"upload_mbps": rate}

        self.each_run(["download_mbps"], download)
        self.each_run(["upload_mbps"], upload)

    def latency(self) -> None:
        def measure(target: Target) -> dict[str, float]:
            maximum = self.recorder.median(target.name, "keepalive_c32_rps")
            if maximum is None:
                maximum = self._wrk(target, 32).requests_per_s
                self.recorder.add(target.name, "keepalive_c32_rps", maximum)
            result: RateResult = run_h2load_rate(
                target.endpoint,
                "/small",
                workdir=self.context.workdir,
                rate=maximum / 2,
                clients=32,
                seconds=self.settings.seconds,
            )
            return {
                "fixed_rate_rps": result.achieved_rate,
                "fixed_p50_ms": result.p50_ms,
                "fixed_p99_ms": result.p99_ms,
                "fixed_p999_ms": result.p999_ms,
            }

        self.each_run(["fixed_rate_rps", "fixed_p50_ms", "fixed_p99_ms", "fixed_p999_ms"], measure)

    def head_of_line(self) -> None:
        def probe(target: Target) -> WrkResult:
            return run_wrk(
                target.endpoint,
                "/small",
                lua_script=self.settings.wrk_script,
                threads=1,
                connections=8,
                seconds=self.settings.seconds,
            )

        def measure(target: Target) -> dict[str, float]:
            idle = probe(target)
            budget = self.settings.seconds + 30
            with BackgroundDownloads(target.endpoint, budget) as downloads:
                # Let the first download get going so the probe starts on a busy tunnel.
                time.sleep(0.3)
                loaded = probe(target)
            if downloads.errors:
                self.recorder.detail(target.name, "hol_download_errors", downloads.errors[:3])
            values = {
                "hol_idle_p99_ms": idle.p99_ms,
                "hol_loaded_p99_ms": loaded.p99_ms,
                "hol_p99_growth": loaded.p99_ms / idle.p99_ms if idle.p99_ms else 0.0,
            }
            background = downloads.mbps()
            if background is not None:
                values["hol_background_mbps"] = background
            return values

        keys = ["hol_idle_p99_ms", "hol_loaded_p99_ms", "hol_p99_growth", "hol_background_mbps"]
        self.each_run(keys, measure)

    def websockets(self) -> None:
        keys = [m.key for m in METRICS if m.scenario == "websockets"]
        for target in self._usable("websockets"):
            self.say(f"  websockets: {target.name}, {self.settings.websocket_streams} streams")
            try:
                self._hold_websockets(target)
            except BenchError as error:
                self.recorder.fail(target.name, keys, str(error))
                self.say(f"    failed: {error}")
            finally:
                target.close_websocket_route(self.context)

    def _hold_websockets(self, target: Target) -> None:
        group = self.context.group
        route = target.open_websocket_route(self.context)
        before = {role: process.tree_rss_kib() for role, process in route.rss_roles.items()}
        endpoint = route.endpoint
        extra: list[str] = []
        if endpoint.headers:
            headers_file = self.context.workdir / f"ws-headers-{target.name}"
            headers_file.touch(mode=0o600)
            headers_file.write_text("".join(f"{header}\n" for header in endpoint.headers))
            extra = ["--headers-file", str(headers_file)]
        holder = group.start(
            "ws-hold",
            [
                sys.executable,
                str(BENCH_DIR / "ws_hold.py"),
                "--port",
                str(endpoint.port),
                "--host",
                endpoint.host_header or f"127.0.0.1:{endpoint.port}",
                "--count",
                str(self.settings.websocket_streams),
                "--open-timeout",
                str(WS_OPEN_TIMEOUT_S),
                *extra,
            ],
            keep_stdin_open=True,
        )
        try:
            held = _wait_for_event(holder, "held", WS_OPEN_TIMEOUT_S + 30)
            verified = _wait_for_event(holder, "verified", 60)
            after = {role: process.tree_rss_kib() for role, process in route.rss_roles.items()}
            opened = int(str(held["opened"]))
            self.recorder.detail(target.name, "ws_open", held)
            self.recorder.detail(target.name, "ws_echo_sample", verified)
            if opened == 0:
                raise BenchError(f"no WebSocket stream opened: {held.get('failures')}")
            if verified["echoed"] != verified["sample"]:
                raise BenchError(
                    f"only {verified['echoed']} of {verified['sample']} sampled streams echoed"
                )
            self.recorder.add(target.name, "ws_held", opened)
            for role in route.rss_roles:
                self.recorder.add(target.name, f"ws_{role}_rss_before_mib", before[role] / MIB)
                self.recorder.add(target.name, f"ws_{role}_rss_after_mib", after[role] / MIB)
                per_stream = (after[role] - before[role]) / opened
                self.recorder.add(target.name, f"ws_{role}_kib_per_stream", per_stream)
            if holder.popen.stdin is not None:
                holder.popen.stdin.close()
            closed = _wait_for_event(holder, "closed", 120)
            self.recorder.detail(target.name, "ws_dropped_while_held", closed["dropped"])
        finally:
            group.stop(holder)


def _wait_for_event(process: ManagedProcess, name: str, timeout_s: float) -> dict[str, object]:
    found: list[dict[str, object]] = []

    def seen() -> bool:
        for line in process.stdout_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("event") == name:
                found.append(event)
                return True
        return False

    if not seen():
        wait_until(seen, timeout_s=timeout_s, what=f"ws_hold {name}", watch=[process])
    return found[-1]
