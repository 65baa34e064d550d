"""tunnelgate benchmark: the origin directly, through tunnelgate and through `ssh -R`, in one run.

Beside them, hypercorn with a trio worker serving the small body itself is measured as the
reference of the keep-alive target.

Usage: `.venv/bin/python bench/run.py [--quick] [--only NAME ...]` (see bench/README.md).

Everything runs on 127.0.0.1 with kernel-chosen ports, every load is bounded in time, and every
process the harness starts is stopped when it ends, fails or is interrupted. The harness installs
nothing: `bench/setup.sh` does. A target that cannot be set up (for instance while the product's
commands are unfinished) is reported as failed or skipped with the reason, and the others are
still measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from load import write_wrk_script
from origin import start_origins
from processes import BenchError, ProcessGroup
from report import build_results, markdown_table, selected_scenarios, update_readme, write_chart
from scenarios import SCENARIOS, Bench, Recorder, Settings
from ssh_nodelay import probe_ssh_nodelay_variants
from targets import (
    Direct,
    HypercornTrio,
    RunContext,
    SshReverse,
    Target,
    TargetSkipped,
    Tunnelgate,
    TunnelgateAccess,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# What a run writes into the tree itself, left out of its "uncommitted changes" check.
HARNESS_OUTPUTS = (":(exclude)bench/results", ":(exclude)bench/README.md")
INSTALL_HINT = (
    "install them with: apt-get install wrk nghttp2-client nginx openssh-server "
    "openssh-client curl   (or run bench/setup.sh as root)"
)
REQUIRED_TOOLS = ("wrk", "h2load", "nginx", "ssh", "ssh-keygen", "sshd", "curl")
FULL_RUNS, FULL_SECONDS, FULL_STREAMS = 3, 5.0, 10_000
QUICK_RUNS, QUICK_SECONDS, QUICK_STREAMS = 1, 2.0, 1_000


def make_targets() -> list[Target]:
    return [
        Direct("direct", "origin direct"),
        HypercornTrio("hypercorn-trio", "hypercorn-trio direct"),
        Tunnelgate("tunnelgate", "tunnelgate"),
        TunnelgateAccess("tunnelgate-access", "tunnelgate + Access"),
        SshReverse("ssh-R", "ssh -R"),
        SshReverse("ssh-R-nodelay", "ssh -R, TCP_NODELAY", interactive=True),
    ]


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )


def missing_tools() -> list[str]:
    return [name for name in REQUIRED_TOOLS if find_tool(name) is None]


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def tool_versions() -> dict[str, str]:
    return {
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "nginx": _first_line([find_tool("nginx") or "nginx", "-v"]),
        "ssh": _first_line(["ssh", "-V"]),
        "curl": _first_line(["curl", "--version"]),
        "hypercorn": _package_version("hypercorn"),
        "trio": _package_version("trio"),
    }


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path = REPO_DIR) -> tuple[str, bool]:
    """The short commit, and whether the tree differs from it. The harness's own outputs (the
    results files and the README table) do not count: a run after an uncommitted earlier run
    measures the committed code all the same."""

    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "-C", str(repo), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    try:
        head = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain", "--", ".", *HARNESS_OUTPUTS)
    except (OSError, subprocess.TimeoutExpired):
        return "nocommit", True
    commit = head.stdout.strip() if head.returncode == 0 else "nocommit"
    return commit, bool(status.stdout.strip())


def unused_stem(base: str, directory: Path) -> str:
    """``base``, or ``base-2``, ``base-3``...: a second run of the same commit on the same day
    must not overwrite the first one's results."""
    stem, number = base, 1
    while (directory / f"{stem}.json").exists():
        number += 1
        stem = f"{base}-{number}"
    return stem


def raise_file_limit() -> None:
    """10,000 held WebSockets need more descriptors than the default soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    target_names = [target.name for target in make_targets()]
    parser = argparse.ArgumentParser(
        description="Measure tunnelgate against the origin and against ssh -R (bench/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 run of 2 s per row, 1,000 streams: a smoke test"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        choices=[*SCENARIOS, *target_names],
        help=f"limit to these scenarios ({', '.join(SCENARIOS)}) and/or targets "
        f"({', '.join(target_names)}); repeatable",
    )
    parser.add_argument("--runs", type=int, help="runs per row (default 3, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per load run (default 5, quick 2)")
    parser.add_argument("--streams", type=int, help="idle WebSocket streams (10,000; quick 1,000)")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not rewrite the table in bench/README.md"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary directory and its logs"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: redraw the chart and the README table from a results file",
    )
    return parser.parse_args(argv)


PYTHON_LOOP_STEPS = 10_000_000


def python_loop_seconds(steps: int = PYTHON_LOOP_STEPS) -> float:
    """Seconds this machine takes for a plain Python loop right now, the best of three.

    Why: the same build's rows moved by up to 2x between machines and by up to 30% within
    minutes on one, and `ssh -R` (C) and tunnelgate (Python) do not move together. Taken before
    the first load and after the last, it says how steady the run's machine was. It does not
    say how fast the machine runs a server's Python next to C (a loop this small stays in
    the caches): the line on hypercorn-trio over `ssh -R` above the table does that.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for step in range(steps):
            total += step
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(arguments: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    quick = arguments.quick
    settings = Settings(
        runs=arguments.runs or (QUICK_RUNS if quick else FULL_RUNS),
        seconds=arguments.seconds or (QUICK_SECONDS if quick else FULL_SECONDS),
        websocket_streams=arguments.streams or (QUICK_STREAMS if quick else FULL_STREAMS),
        wrk_script=write_wrk_script(workdir),
    )
    chosen_targets = {name for name in arguments.only if name not in SCENARIOS}
    targets = [t for t in make_targets() if not chosen_targets or t.name in chosen_targets]
    selected = selected_scenarios(arguments.only)
    recorder = Recorder()
    group = ProcessGroup(workdir / "logs")
    nodelay_probe: dict[str, object] = {}
    with group.running():
        say("starting the origins (nginx, WebSocket origin)")
        context = RunContext(
            group, workdir, start_origins(group, workdir), Path(sys.prefix) / "bin"
        )
        for target in targets:
            say(f"setting up {target.name}")
            try:
                target.setup(context)
                target.mark("ok")
            except TargetSkipped as skipped:
                target.mark("skipped", str(skipped))
            except BenchError as error:
                target.mark("failed", str(error))
            if not target.usable:
                say(f"  {target.status}: {target.reason}")
                target.shutdown(group)
            elif isinstance(target, SshReverse):
                recorder.detail(target.name, "tcp_nodelay", target.nodelay())
        plain_ssh = next((t for t in targets if isinstance(t, SshReverse) and t.usable), None)
        if plain_ssh is not None:
            say("reading TCP_NODELAY off the ssh sockets")
            nodelay_probe = probe_ssh_nodelay_variants(context, plain_ssh)
        bench = Bench(settings, context, targets, recorder, say)
        loop_before = python_loop_seconds()
        if "rss" in selected:
            bench.rss_idle()
        if "keepalive" in selected:
            say("1. keep-alive")
            bench.keepalive()
        elif "rss" in selected:
            bench.rss_under_load()
        steps = (
            ("close", "2. Connection: close", bench.close),
            ("transfer", "3. 64 MiB transfers", bench.transfer),
            ("latency", "4. fixed-rate latency", bench.latency),
            ("hol", "5. head-of-line probe", bench.head_of_line),
            ("websockets", "6. idle WebSocket streams", bench.websockets),
        )
        for scenario, title, step in steps:
            if scenario in selected:
                say(title)
                step()
        loop_after = python_loop_seconds()
    commit, dirty = git_commit()
    date = datetime.date.today().isoformat()
    stem = unused_stem(
        f"{date}-{commit}" + ("-quick" if quick else "") + ("-partial" if arguments.only else ""),
        RESULTS_DIR,
    )
    header: dict[str, Any] = {
        "schema": 1,
        "date": date,
        "commit": commit,
        "dirty": dirty,
        "file_stem": stem,
        "mode": "quick" if quick else "full",
        "runs": settings.runs,
        "seconds": settings.seconds,
        "websocket_streams": settings.websocket_streams,
        "only": arguments.only,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpu_model": cpu_model(),
            "python_loop_seconds": {
                "steps": PYTHON_LOOP_STEPS,
                "before": loop_before,
                "after": loop_after,
            },
        },
        "tools": tool_versions(),
        "ssh_nodelay_probe": nodelay_probe,
    }
    return build_results(header=header, targets=targets, recorder=recorder, selected=selected)


def publish(results: dict[str, Any], *, update: bool) -> None:
    """Chart, JSON and table of one run; the README table only for a full, unfiltered run."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = results["file_stem"]
    chart = write_chart(results, RESULTS_DIR / f"{stem}.png")
    results["chart"] = chart
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results, chart)
    sys.stdout.write(table)
    say(f"results: {RESULTS_DIR / (stem + '.json')}" + (f", chart: {chart}" if chart else ""))
    if chart is None:
        say("no chart: matplotlib is not installed in this Python (bench/setup.sh installs it)")
    if update:
        update_readme(BENCH_DIR / "README.md", table)
        say("bench/README.md updated")


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.render is not None:
        rendered = json.loads(arguments.render.read_text())
        publish(rendered, update=rendered["mode"] == "full" and not rendered["only"])
        return 0
    missing = missing_tools()
    if missing:
        say(f"missing tools: {', '.join(missing)}; {INSTALL_HINT}")
        return 2
    raise_file_limit()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Ctrl-C stops the run even when started from a shell that ignores SIGINT in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="tunnelgate-bench-", dir=base))
    try:
        results = run_bench(arguments, workdir)
    except BenchError as error:
        say(f"bench aborted: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted: every process the bench started has been stopped")
        return 130
    finally:
        if arguments.keep_workdir:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    publish(results, update=not (arguments.no_readme or arguments.quick or arguments.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
