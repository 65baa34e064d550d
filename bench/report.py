"""Turn one run's recordings into the results JSON, the Markdown table and the PNG chart.

Every cell is either a measured median with its min-max spread and the number of runs, or a
status with its reason (`failed: ...`, `skipped: ...`, `not run`): a row is never filled in from
anything but a measurement of this run. Ratios are this target's median divided by the
reference's median from the same run (`x direct`, `x ssh -R`); for rows measured in ms or MiB
lower is better, so there a ratio below 1 is the good side. hypercorn-trio is a reference for
one row only (the keep-alive target), so its ratios are not a column but a short list under the
keep-alive table, also stored in the JSON as `ratios_to_hypercorn_trio`.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import goals
from scenarios import METRICS, SCENARIOS, Metric, Recorder
from targets import Target

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
DIRECT = "direct"
SSH_REFERENCE = "ssh-R"
HYPERCORN_REFERENCE = "hypercorn-trio"
HYPERCORN_METRIC = "keepalive_c32_rps"
# Who is compared to hypercorn-trio on that row, and the project's goal for the ratio, if any.
HYPERCORN_COMPARED = (("tunnelgate-access", ">= 2"), ("tunnelgate", None))
# hypercorn-trio and ssh -R keep-alive req/s on the machine where the targets were recorded
# (bench/README.md, "Targets"): the Python server at ~0.15x the C tunnel.
REFERENCE_MACHINE_RPS = {HYPERCORN_REFERENCE: 2_300, SSH_REFERENCE: 15_500}
CHART_METRICS = (
    "keepalive_c32_rps",
    "close_c32_rps",
    "download_mbps",
    "upload_mbps",
    "fixed_p99_ms",
    "hol_loaded_p99_ms",
)
SCENARIO_TITLES = {
    "rss": "7. Memory (RSS of connector and edge; for ssh: the ssh client and the sshd tree)",
    "keepalive": "1. Small GET, keep-alive",
    "close": "2. Small GET, Connection: close",
    "transfer": "3. 64 MiB download and upload",
    "latency": "4. Latency at a fixed rate (half the measured keep-alive maximum)",
    "hol": "5. Head-of-line probe",
    "websockets": "6. Idle WebSocket streams on one tunnel",
}
NOT_APPLICABLE = "not applicable to this target"
REPORT_ORDER = ("keepalive", "close", "transfer", "latency", "hol", "websockets", "rss")


def summarize_cell(
    recorder: Recorder, target: Target, metric: Metric, selected: set[str]
) -> dict[str, Any]:
    if not target.takes_part_in(metric.scenario):
        return {"status": "not run", "reason": NOT_APPLICABLE}
    values = recorder.values.get((target.name, metric.key))
    if values:
        cell: dict[str, Any] = {
            "status": "ok",
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "runs": values,
        }
        failure = recorder.failures.get((target.name, metric.key))
        if failure:
            cell["failed_runs_reason"] = failure
        return cell
    if target.status in ("failed", "skipped"):
        return {"status": target.status, "reason": target.reason}
    failure = recorder.failures.get((target.name, metric.key))
    if failure:
        return {"status": "failed", "reason": failure}
    if metric.scenario not in selected:
        return {"status": "not run", "reason": "not selected with --only"}
    return {"status": "not run", "reason": NOT_APPLICABLE}


def build_results(
    *,
    header: dict[str, Any],
    targets: list[Target],
    recorder: Recorder,
    selected: set[str],
) -> dict[str, Any]:
    metrics = []
    for metric in METRICS:
        results = {t.name: summarize_cell(recorder, t, metric, selected) for t in targets}
        measured = any(
            (t.name, metric.key) in recorder.values or (t.name, metric.key) in recorder.failures
            for t in targets
        )
        if not measured and metric.scenario not in selected:
            continue
        if all(cell.get("reason") == NOT_APPLICABLE for cell in results.values()):
            continue  # e.g. the RSS rows when only the direct target ran
        metrics.append(
            {
                "key": metric.key,
                "scenario": metric.scenario,
                "title": metric.title,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "results": results,
            }
        )
    return {
        **header,
        "targets": [
            {"name": t.name, "label": t.label, "status": t.status, "reason": t.reason}
            for t in targets
        ],
        "metrics": metrics,
        "ratios_to_hypercorn_trio": ratios_to_hypercorn(metrics),
        "goals": goals.verdicts(metrics),
        "details": recorder.details,
    }


def _unmeasured(name: str, cell: dict[str, Any]) -> str | None:
    if cell["status"] == "ok":
        return None
    reason = cell.get("reason")
    return f"{name} {cell['status']}" + (f": {reason}" if reason else "")


def ratios_to_hypercorn(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """tunnelgate's keep-alive -c32 median over hypercorn-trio's, from this run only.

    None when the row or hypercorn-trio is not part of the run; a ratio that cannot be computed
    is null with the reason, never filled in.
    """
    row = next((m for m in metrics if m["key"] == HYPERCORN_METRIC), None)
    if row is None or HYPERCORN_REFERENCE not in row["results"]:
        return None
    cells = row["results"]
    reference = cells[HYPERCORN_REFERENCE]
    compared = []
    for name, goal in HYPERCORN_COMPARED:
        if name not in cells:
            continue
        cell = cells[name]
        entry: dict[str, Any] = {"target": name, "goal": goal}
        reason = _unmeasured(name, cell) or _unmeasured(HYPERCORN_REFERENCE, reference)
        if reason is None and not reference["median"]:
            reason = f"{HYPERCORN_REFERENCE} median is 0"
        if reason is None:
            entry["ratio"] = cell["median"] / reference["median"]
            entry["target_median"] = cell["median"]
            entry["reference_median"] = reference["median"]
        else:
            entry["ratio"] = None
            entry["reason"] = reason
        compared.append(entry)
    if not compared:
        return None
    return {"metric": HYPERCORN_METRIC, "reference": HYPERCORN_REFERENCE, "compared": compared}


def format_number(value: float) -> str:
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(cell: dict[str, Any], reference: dict[str, Any] | None) -> str:
    if reference is None or cell["status"] != "ok" or reference["status"] != "ok":
        return ""
    if not reference["median"]:
        return ""
    ratio = cell["median"] / reference["median"]
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def _escape(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _cell_text(cell: dict[str, Any], target: dict[str, Any]) -> tuple[str, str]:
    if cell["status"] == "ok":
        spread = f"{format_number(cell['min'])}-{format_number(cell['max'])}"
        runs = len(cell["runs"])
        return format_number(cell["median"]), f"{spread} (n={runs})"
    reason = _escape(str(cell.get("reason", "")))
    if target["status"] in ("failed", "skipped"):
        reason = _escape(target["reason"])
    if len(reason) > 100:
        reason = reason[:97] + "..."
    return f"**{cell['status']}**: {reason}" if reason else cell["status"], ""


def _machine_speed(machine: dict[str, Any]) -> list[str]:
    """A line on how fast the machine ran Python before the first load and after the last."""
    loop = machine.get("python_loop_seconds")
    if not isinstance(loop, dict):
        return []  # results written before the probe existed
    return [
        f"Machine: {machine.get('cpu_model', 'unknown')}; a {loop['steps']:,}-step Python loop "
        f"took {loop['before']:.2f} s before the first load and {loop['after']:.2f} s after the "
        "last (ratios compare within one run only).",
        "",
    ]


def python_to_c_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """hypercorn-trio's keep-alive rate over ssh -R's in this run, next to the reference machine's.

    Why: tunnelgate is Python and ssh -R is C, and machines differ far more in one than in the
    other (hypercorn-trio 1,000-3,000 req/s against ssh -R 10,000-46,000 on the machines seen so
    far), so every tunnelgate / ssh -R ratio moves with this one. A plain Python loop did not
    show it: 0.37-0.64 s on a machine that ran the edge's requests about three times slower per
    instruction than one where it took 0.39-0.51 s.
    """
    row = next((m for m in metrics if m["key"] == HYPERCORN_METRIC), None)
    if row is None:
        return []
    cells = [row["results"].get(name) for name in (HYPERCORN_REFERENCE, SSH_REFERENCE)]
    if any(cell is None or cell["status"] != "ok" or not cell["median"] for cell in cells):
        return []
    python, c = (cell["median"] for cell in cells if cell is not None)
    reference_python = REFERENCE_MACHINE_RPS[HYPERCORN_REFERENCE]
    reference_c = REFERENCE_MACHINE_RPS[SSH_REFERENCE]
    return [
        f"Python against C on this machine: hypercorn-trio served {format_number(python)} "
        f"keep-alive req/s and `ssh -R` relayed {format_number(c)}, a ratio of "
        f"{python / c:.3f}; on the machine where the targets were recorded, "
        f"{reference_python:,} / {reference_c:,} = {reference_python / reference_c:.3f}. "
        "Every tunnelgate / `ssh -R` ratio below moves with this one.",
        "",
    ]


def goal_lines(entries: list[dict[str, Any]], unit_of: dict[str, str]) -> list[str]:
    """The verdicts of ``goals.verdicts`` as a Markdown list, each with the medians it divided."""
    if not entries:
        return []
    lines = ['Targets met in this run (medians; bench/README.md, "Targets"):', ""]
    for entry in entries:
        if entry["met"] is None:
            lines.append(f"- {entry['goal']}: no verdict, {entry['reason']}")
            continue
        unit = unit_of.get(entry["metric"], "")
        value = format_number(entry["value"])
        if entry["reference_value"] is None:
            shown = f"{value}{'' if unit == 'x' else ' '}{unit}".rstrip()
        else:
            reference = format_number(entry["reference_value"])
            shown = f"{entry['figure']:.2f}x ({value} / {reference} {unit}".rstrip() + ")"
        lines.append(f"- {entry['goal']}: {shown}: **{'met' if entry['met'] else 'missed'}**")
    return [*lines, ""]


def markdown_table(results: dict[str, Any], chart_name: str | None) -> str:
    labels = {t["name"]: t["label"] for t in results["targets"]}
    targets = {t["name"]: t for t in results["targets"]}
    lines = [
        f"Run of {results['date']}, commit `{results['commit']}`"
        f"{' (uncommitted changes)' if results.get('dirty') else ''}, "
        f"{results['mode']}: {results['runs']} run(s) of {results['seconds']:g} s per row, "
        f"{results['machine']['cpus']} CPUs, everything on 127.0.0.1. "
        f"Raw numbers: `bench/results/{results['file_stem']}.json`.",
        "",
        *_machine_speed(results["machine"]),
        *python_to_c_lines(results["metrics"]),
        # Computed again rather than read back, so older results files render the same way.
        *goal_lines(
            goals.verdicts(results["metrics"]), {m["key"]: m["unit"] for m in results["metrics"]}
        ),
        "Set-ups measured:",
        "",
        *(
            f"- **{t['label']}**: {t['status']}"
            + (f": {_escape(t['reason'])}" if t["reason"] else "")
            for t in results["targets"]
        ),
        "",
    ]
    probe = results.get("ssh_nodelay_probe")
    if isinstance(probe, dict) and probe:
        findings = []
        for variant, flags in probe.items():
            if isinstance(flags, dict) and "client_nodelay" in flags:
                findings.append(
                    f"`{variant}`: client {flags['client_nodelay']}, server {flags['server_nodelay']}"
                )
        if findings:
            lines += ["TCP_NODELAY read off the live ssh sockets: " + "; ".join(findings) + ".", ""]
    if chart_name:
        lines += [f"![benchmark chart](results/{chart_name})", ""]
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for metric in results["metrics"]:
        by_scenario.setdefault(metric["scenario"], []).append(metric)
    for scenario in REPORT_ORDER:
        if scenario not in by_scenario:
            continue
        lines += [
            f"#### {SCENARIO_TITLES[scenario]}",
            "",
            "| row | target | median | min-max (runs) | x direct | x ssh -R |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        # A target that failed or was skipped as a whole gets one marked row per scenario.
        unmeasured_shown: set[str] = set()
        for metric in by_scenario[scenario]:
            cells = metric["results"]
            for name, cell in cells.items():
                if cell.get("reason") == NOT_APPLICABLE:
                    continue
                if targets[name]["status"] in ("failed", "skipped") and cell["status"] != "ok":
                    if name in unmeasured_shown:
                        continue
                    unmeasured_shown.add(name)
                median, spread = _cell_text(cell, targets[name])
                unit = f" {metric['unit']}" if cell["status"] == "ok" else ""
                lines.append(
                    f"| {metric['title']} | {labels[name]} | {median}{unit} | {spread} | "
                    f"{_ratio(cell, cells.get(DIRECT)) if name != DIRECT else ''} | "
                    f"{_ratio(cell, cells.get(SSH_REFERENCE)) if name != SSH_REFERENCE else ''} |"
                )
        lines.append("")
        if scenario == "keepalive":
            lines += _hypercorn_lines(results.get("ratios_to_hypercorn_trio"), labels)
    return "\n".join(lines).rstrip() + "\n"


def _hypercorn_lines(ratios: dict[str, Any] | None, labels: dict[str, str]) -> list[str]:
    if not ratios:
        return []
    reference = labels.get(ratios["reference"], ratios["reference"])
    lines = [f"Keep-alive `-c32` req/s against {reference} (medians of this run):", ""]
    for entry in ratios["compared"]:
        name = f"{labels.get(entry['target'], entry['target'])} / {ratios['reference']}"
        goal = f" (target {entry['goal']})" if entry["goal"] else ""
        if entry["ratio"] is None:
            lines.append(f"- {name}: not computed: {_escape(entry['reason'])}{goal}")
        else:
            lines.append(f"- {name}: {entry['ratio']:.2f}x{goal}")
    return [*lines, ""]


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} lacks the {README_START} / {README_END} markers")
    readme.write_text(text[: start + len(README_START)] + "\n" + table + text[end:])


def write_chart(results: dict[str, Any], path: Path) -> str | None:
    """A bar chart of the headline rows; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = {m["key"]: m for m in results["metrics"]}
    shown = [metrics[key] for key in CHART_METRICS if key in metrics]
    if not shown:
        return None
    labels = {t["name"]: t["label"] for t in results["targets"]}
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for axis, metric in zip(axes.flat, shown, strict=False):
        names = [
            name for name, cell in metric["results"].items() if cell.get("reason") != NOT_APPLICABLE
        ]
        medians, low, high, texts = [], [], [], []
        for name in names:
            cell = metric["results"][name]
            if cell["status"] == "ok":
                medians.append(cell["median"])
                low.append(cell["median"] - cell["min"])
                high.append(cell["max"] - cell["median"])
                texts.append(format_number(cell["median"]))
            else:
                medians.append(0.0)
                low.append(0.0)
                high.append(0.0)
                texts.append(cell["status"])
        positions = range(len(names))
        axis.bar(positions, medians, yerr=[low, high], capsize=4, color="#4c72b0")
        for position, value, text in zip(positions, medians, texts, strict=True):
            axis.text(position, value, text, ha="center", va="bottom", fontsize=8)
        axis.set_xticks(list(positions))
        axis.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=8)
        better = "higher is better" if metric["higher_is_better"] else "lower is better"
        axis.set_title(f"{metric['title']}\n{metric['unit']}, {better}", fontsize=9)
    for axis in list(axes.flat)[len(shown) :]:
        axis.set_visible(False)
    figure.suptitle(f"tunnelgate bench {results['date']} {results['commit']} ({results['mode']})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path.name


def selected_scenarios(only: list[str]) -> set[str]:
    chosen = {name for name in only if name in SCENARIOS}
    return chosen or set(SCENARIOS)
