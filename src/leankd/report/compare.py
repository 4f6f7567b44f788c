"""Compare several finished runs: one markdown row per (run, model role)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from leankd.errors import LeanKDError
from leankd.report.markdown import (
    DASH,
    _md_table,
    fmt_auto,
    fmt_fixed,
    fmt_int,
    fmt_millions,
    fmt_pct,
    fmt_points,
)
from leankd.report.schema import STUDENT_ROLE, load_report

COLUMNS = [
    "run", "role", "architecture", "accuracy (%)", "macro-F1 (%)", "params", "size (MB)", "MACs (M)",
    "CPU b1 median (ms)", "train time (s)", "KD gain (points)",
]


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


def compare_runs(run_dirs: list[Path]) -> str:
    """Markdown table over the `report.json` of each run dir. Raises `LeanKDError` naming the missing file."""
    if not run_dirs:
        raise LeanKDError("compare needs at least one run directory (each made by `leankd run`).")
    loaded = [(Path(d), load_report(d)) for d in run_dirs]
    names = [rep["run"]["name"] for _, rep in loaded]
    rows = []
    for d, rep in loaded:
        name = rep["run"]["name"]
        if names.count(name) > 1:
            name = f"{name} ({d})"
        gain = _g(rep, "ratios", "kd_gain_points")
        for role, e in rep["models"].items():
            rows.append([
                name,
                role,
                e.get("architecture") or DASH,
                fmt_pct(_g(e, "quality", "accuracy")),
                fmt_pct(_g(e, "quality", "macro_f1")),
                fmt_int(_g(e, "cost", "params")),
                fmt_fixed(_g(e, "cost", "size_mb"), 2),
                fmt_millions(_g(e, "cost", "macs")),
                fmt_fixed(_g(e, "latency", "cpu", "batch_1", "median_ms"), 2),
                fmt_auto(_g(e, "training", "wall_time_s")),
                fmt_points(gain) if role == STUDENT_ROLE else DASH,
            ])
    lines = _md_table(COLUMNS, rows, align_right_from=3)

    reports = [rep for _, rep in loaded]
    caveats = []
    for keys, what in (
        (("run", "dataset", "source"), "data sources"),
        (("run", "dataset", "eval_split"), "eval splits"),
        (("run", "dataset", "eval_size"), "eval sizes"),
    ):
        vals = _differs(reports, *keys)
        if vals:
            caveats.append(f"Runs use different {what} ({', '.join(map(str, vals))}): accuracies are not directly comparable.")
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
