"""Compare several finished runs: one markdown row per (run, model role), and the best KD student on each primary
metric the runs are judged by (`run.dataset.primary_metric`; accuracy for reports that name none)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from leankd.errors import LeanKDError
from leankd.report.base import STUDENT_ROLE
from leankd.report.figures import primary_value, report_primary
from leankd.report.format import (
    ACCURACY_LIKE,
    DASH,
    _fmt_metric,
    _md_table,
    _primary_label,
    fmt_auto,
    fmt_fixed,
    fmt_int,
    fmt_millions,
    fmt_pct,
    fmt_points,
)
from leankd.report.schema import load_report

COLUMNS = [
    "run", "role", "architecture", "accuracy (%)", "macro-F1 (%)", "params", "size (MB)", "MACs (M)",
    "CPU b1 median (ms)", "train time (s)", "KD gain (points)",
]
# added after `architecture` when a run is judged by a metric other than accuracy (Pearson r for regression)
PRIMARY_COLUMNS = ["primary metric", "primary (x100)"]


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _differs(reports: list[dict], *keys: str) -> list:
    vals = []
    for r in reports:
        v = _g(r, *keys)
        if v not in vals:
            vals.append(v)
    return vals if len(vals) > 1 else []


def _kd_gain(report: dict) -> Any:
    """The KD student's gain over the baseline on the run's primary metric (+ = better); accuracy (Pearson r) for
    reports without a primary gain."""
    if _g(report, "ratios", "primary_metric"):
        return _g(report, "ratios", "kd_gain_primary_points")
    return _g(report, "ratios", "kd_gain_points")


def _direction(primary: dict) -> str:
    return "higher" if primary.get("higher_is_better") is not False else "lower"


def best_students(named: list[tuple[str, dict]]) -> list[str]:
    """One line per primary metric (name and direction) that two or more runs' KD students were measured on: the
    run whose KD student is best on it, in that metric's direction (ties all named)."""
    groups: dict[tuple[str, bool], list[tuple[str, float, dict]]] = {}
    for name, rep in named:
        primary = report_primary(rep)
        value = primary_value(_g(rep, "models", STUDENT_ROLE), primary)
        if value is not None:
            key = (primary["name"], primary.get("higher_is_better") is not False)
            groups.setdefault(key, []).append((name, value, primary))
    lines = []
    for (metric, higher), runs in groups.items():
        if len(runs) < 2:
            continue
        best = max(v for _, v, _ in runs) if higher else min(v for _, v, _ in runs)
        winners = [n for n, v, _ in runs if v == best]
        tied = " (tied)" if len(winners) > 1 else ""
        lines.append(f"Best KD student on {_primary_label(runs[0][2])}: {' and '.join(winners)}{tied} at "
                     f"{_fmt_metric(metric, best)} (of {len(runs)} runs).")
    return lines


def compare_runs(run_dirs: list[Path]) -> str:
    """Markdown table over the `report.json` of each run dir. Raises `LeanKDError` naming the missing file."""
    if not run_dirs:
        raise LeanKDError("compare needs at least one run directory (each made by `leankd run`).")
    loaded = [(Path(d), load_report(d)) for d in run_dirs]
    names = [rep["run"]["name"] for _, rep in loaded]
    # a primary metric other than accuracy gets its own columns; the KD gain column is always on the primary metric
    show_primary = any(report_primary(rep)["name"] not in ACCURACY_LIKE for _, rep in loaded)
    rows, named = [], []
    for d, rep in loaded:
        name = rep["run"]["name"]
        if names.count(name) > 1:
            name = f"{name} ({d})"
        named.append((name, rep))
        primary = report_primary(rep)
        gain = _kd_gain(rep)
        for role, e in rep["models"].items():
            rows.append([
                name,
                role,
                e.get("architecture") or DASH,
                *([f"{primary['name']} ({_direction(primary)} is better)", fmt_pct(primary_value(e, primary))]
                  if show_primary else []),
                fmt_pct(_g(e, "quality", "accuracy")),
                fmt_pct(_g(e, "quality", "macro_f1")),
                fmt_int(_g(e, "cost", "params")),
                fmt_fixed(_g(e, "cost", "size_mb"), 2),
                fmt_millions(_g(e, "cost", "macs")),
                fmt_fixed(_g(e, "latency", "cpu", "batch_1", "median_ms"), 2),
                fmt_auto(_g(e, "training", "wall_time_s")),
                fmt_points(gain) if role == STUDENT_ROLE else DASH,
            ])
    header = COLUMNS[:3] + (PRIMARY_COLUMNS if show_primary else []) + COLUMNS[3:-1]
    header.append("KD gain on the primary metric (points, + = better)" if show_primary else COLUMNS[-1])
    lines = _md_table(header, rows, align_right_from=3 + (1 if show_primary else 0))

    reports = [rep for _, rep in loaded]
    best = best_students(named)
    if best:
        lines += [""] + best
    caveats = []
    metrics = list(dict.fromkeys(f"{p['name']} ({_direction(p)} is better)" for p in map(report_primary, reports)))
    if len(metrics) > 1:
        caveats.append(f"Runs are judged by different primary metrics ({', '.join(metrics)}): their primary values and "
                       "KD gains are not directly comparable.")
    for keys, what in (
        (("run", "dataset", "source"), "data sources"),
        (("run", "dataset", "eval_split"), "eval splits"),
        (("run", "dataset", "eval_size"), "eval sizes"),
    ):
        vals = _differs(reports, *keys)
        if vals:
            caveats.append(f"Runs use different {what} ({', '.join(map(str, vals))}): quality figures are not directly "
                           "comparable.")
    for keys, what in (
        (("run", "environment", "cpu"), "CPUs"),
        (("run", "environment", "cpu_threads"), "CPU thread counts"),
        (("run", "environment", "torch"), "torch versions"),
    ):
        vals = _differs(reports, *keys)
        if vals:
            caveats.append(f"Runs were measured with different {what} ({', '.join(map(str, vals))}): latencies are not directly comparable.")
    if caveats:
        lines += [""] + [f"- {c}" for c in caveats]
    return "\n".join(lines) + "\n"
