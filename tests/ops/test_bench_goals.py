"""bench/goals.py: the verdict on each target, from one run's medians only; bench/report.py
writes them out."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from .bench_scripts import imported_bench_scripts


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    with imported_bench_scripts("goals", "report") as modules:
        yield modules


@pytest.fixture(scope="module")
def goals(bench: dict[str, ModuleType]) -> ModuleType:
    return bench["goals"]


@pytest.fixture(scope="module")
def report(bench: dict[str, ModuleType]) -> ModuleType:
    return bench["report"]


def ok(median: float) -> dict[str, Any]:
    return {"status": "ok", "median": median, "min": median, "max": median, "runs": [median]}


def metric(key: str, unit: str, **cells: dict[str, Any]) -> dict[str, Any]:
    results = {name.replace("_", "-"): cell for name, cell in cells.items()}
    return {"key": key, "unit": unit, "results": results}


def by_metric(entries: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["metric"] == key]


def test_a_ratio_at_the_bound_is_met_and_just_below_is_missed(goals: ModuleType) -> None:
    def keepalive(access: float) -> list[dict[str, Any]]:
        cells = {"tunnelgate_access": ok(access), "ssh_R": ok(10_000), "hypercorn_trio": ok(2_000)}
        return [metric("keepalive_c32_rps", "req/s", **cells)]

    at_bound, below = keepalive(4_000), keepalive(3_999)

    ssh_goal, hypercorn_goal = by_metric(goals.verdicts(at_bound), "keepalive_c32_rps")
    assert (ssh_goal["met"], ssh_goal["figure"]) == (True, pytest.approx(0.4))
    assert (ssh_goal["value"], ssh_goal["reference_value"]) == (4_000, 10_000)
    assert hypercorn_goal["met"] is True
    ssh_goal, hypercorn_goal = by_metric(goals.verdicts(below), "keepalive_c32_rps")
    assert ssh_goal["met"] is False
    assert hypercorn_goal["met"] is False  # 3,999 / 2,000 < 2


def test_lower_is_better_rows_are_met_at_or_under_the_bound(goals: ModuleType) -> None:
    metrics = [
        metric("keepalive_c32_p99_ms", "ms", tunnelgate_access=ok(11.0), ssh_R=ok(44.0)),
        metric("hol_p99_growth", "x", tunnelgate_access=ok(2.01)),
    ]

    (p99,) = by_metric(goals.verdicts(metrics), "keepalive_c32_p99_ms")
    (growth,) = by_metric(goals.verdicts(metrics), "hol_p99_growth")

    assert (p99["met"], p99["figure"]) == (True, pytest.approx(0.25))
    assert (growth["met"], growth["reference_value"]) == (False, None)


def test_memory_bounds_are_converted_from_mb_and_kb(goals: ModuleType) -> None:
    # 40 MB is 38.15 MiB and 16 KB is 15.63 KiB: a reading between the two spellings misses.
    metrics = [
        metric("rss_connector_idle_mib", "MiB", tunnelgate_access=ok(38.5)),
        metric("ws_connector_kib_per_stream", "KiB", tunnelgate_access=ok(15.5)),
        metric("ws_held", "streams", tunnelgate_access=ok(9_999)),
    ]

    entries = goals.verdicts(metrics)

    assert [e["met"] for e in by_metric(entries, "rss_connector_idle_mib")] == [False]
    assert [e["met"] for e in by_metric(entries, "ws_connector_kib_per_stream")] == [True]
    assert [e["met"] for e in by_metric(entries, "ws_held")] == [False]


def test_an_unmeasured_row_gives_no_verdict_and_says_why(
    goals: ModuleType, report: ModuleType
) -> None:
    failed = {"status": "failed", "reason": "wrk exited 1"}
    metrics = [
        metric("download_mbps", "MB/s", tunnelgate_access=ok(500), ssh_R=failed),
        metric("upload_mbps", "MB/s", tunnelgate_access=failed, ssh_R=ok(300)),
    ]

    entries = goals.verdicts(metrics)

    (download,) = by_metric(entries, "download_mbps")
    (upload,) = by_metric(entries, "upload_mbps")
    (close,) = by_metric(entries, "close_c32_rps")  # row absent from the run
    assert (download["met"], download["reason"]) == (None, "ssh-R not measured on this row")
    assert (upload["met"], upload["reason"]) == (None, "tunnelgate-access not measured on this row")
    assert close["met"] is None
    lines = report.goal_lines(entries, {"download_mbps": "MB/s"})
    assert any(
        "64 MiB download" in line and "no verdict, ssh-R not measured" in line for line in lines
    )
    assert not any("**met**" in line or "**missed**" in line for line in lines)


def test_the_markdown_names_both_medians_and_the_verdict(
    goals: ModuleType, report: ModuleType
) -> None:
    metrics = [
        metric("close_c32_rps", "req/s", tunnelgate_access=ok(2_080), ssh_R=ok(2_269)),
        metric("hol_p99_growth", "x", tunnelgate_access=ok(1.61)),
    ]
    units = {"close_c32_rps": "req/s", "hol_p99_growth": "x"}

    lines = report.goal_lines(goals.verdicts(metrics), units)

    assert (
        "- `Connection: close` `-c32`, with Access, >= 1.0x `ssh -R`: "
        "0.92x (2,080 / 2,269 req/s): **missed**"
    ) in lines
    assert "- head-of-line: loaded p99 <= 2x idle p99, with Access: 1.61x: **met**" in lines
