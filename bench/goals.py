"""The project's speed and memory targets, checked against one run's medians.

Why: the targets (bench/README.md, "Targets") are ratios within one run, and whether a run met
them was worked out by hand from the table. Each verdict here names the two medians it divides,
so a reader can check it, and a row that was not measured gives no verdict rather than a guess.
bench/report.py writes them out, in the table's own number format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACCESS = "tunnelgate-access"
SSH = "ssh-R"
HYPERCORN = "hypercorn-trio"
MB_IN_MIB = 1_000_000 / 2**20
KB_IN_KIB = 1_000 / 2**10


@dataclass(frozen=True)
class Goal:
    """``target``'s median of ``metric``, divided by ``reference``'s when there is one.

    ``bound`` is in the row's own unit: the targets say MB and KB, the rows MiB and KiB.
    """

    text: str
    metric: str
    bound: float
    at_least: bool
    reference: str | None = SSH
    target: str = ACCESS


GOALS = (
    Goal(
        "small keep-alive GET `-c32`, with Access, >= 0.4x `ssh -R`",
        "keepalive_c32_rps",
        0.4,
        at_least=True,
    ),
    Goal(
        "small keep-alive GET `-c32`, with Access, >= 2x hypercorn-trio",
        "keepalive_c32_rps",
        2.0,
        at_least=True,
        reference=HYPERCORN,
    ),
    Goal(
        "`Connection: close` `-c32`, with Access, >= 1.0x `ssh -R`",
        "close_c32_rps",
        1.0,
        at_least=True,
    ),
    Goal("64 MiB download, with Access, >= 1.0x `ssh -R`", "download_mbps", 1.0, at_least=True),
    Goal("64 MiB upload, with Access, >= 1.0x `ssh -R`", "upload_mbps", 1.0, at_least=True),
    Goal(
        "p99 of the saturated `-c32` run, with Access, <= 0.25x `ssh -R`'s",
        "keepalive_c32_p99_ms",
        0.25,
        at_least=False,
    ),
    Goal(
        "head-of-line: loaded p99 <= 2x idle p99, with Access",
        "hol_p99_growth",
        2.0,
        at_least=False,
        reference=None,
    ),
    Goal(
        "connector RSS idle <= 40 MB",
        "rss_connector_idle_mib",
        40 * MB_IN_MIB,
        at_least=False,
        reference=None,
    ),
    Goal(
        "connector RSS per idle WebSocket stream <= 16 KB",
        "ws_connector_kib_per_stream",
        16 * KB_IN_KIB,
        at_least=False,
        reference=None,
    ),
    Goal("10,000 idle WebSocket streams held", "ws_held", 10_000, at_least=True, reference=None),
)


def _median(cells: dict[str, Any], name: str) -> float | None:
    cell = cells.get(name)
    if not cell or cell.get("status") != "ok" or cell.get("median") is None:
        return None
    return float(cell["median"])


def verdicts(
    metrics: list[dict[str, Any]], goals: tuple[Goal, ...] = GOALS
) -> list[dict[str, Any]]:
    """One entry per goal: ``met`` True or False with the figures, or None with the reason."""
    rows = {m["key"]: m["results"] for m in metrics}
    entries = []
    for goal in goals:
        entry: dict[str, Any] = {"goal": goal.text, "metric": goal.metric, "met": None}
        cells = rows.get(goal.metric)
        value = None if cells is None else _median(cells, goal.target)
        reference = None
        if cells is not None and goal.reference is not None:
            reference = _median(cells, goal.reference)
        if value is None:
            entry["reason"] = f"{goal.target} not measured on this row"
        elif goal.reference is not None and not reference:
            entry["reason"] = f"{goal.reference} not measured on this row"
        else:
            figure = value / reference if reference else value
            entry.update(figure=figure, value=value, reference_value=reference)
            entry["met"] = figure >= goal.bound if goal.at_least else figure <= goal.bound
        entries.append(entry)
    return entries
