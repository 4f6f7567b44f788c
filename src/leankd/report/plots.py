"""Plots for the report: training curves and scatters of the task's primary metric against a cost.

Uses matplotlib's object-oriented API (`matplotlib.figure.Figure`, rendered by Agg) and never pyplot, so no
display, no global backend switch and no figure leaks. Every file is written atomically. A plot whose data is
missing is skipped (and a stale copy from an earlier run removed, so `report.md` never links outdated pictures).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from leankd.io import atomic_path, read_jsonl
from leankd.report.figures import primary_value, report_primary
from leankd.report.format import model_label
from leankd.report.schema import validate_report

log = logging.getLogger(__name__)

CURVE_METRICS = [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_accuracy", "val accuracy")]
_DPI = 110


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def _finite(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _load_history(run_dir: Path, rel: Optional[str]) -> list[dict]:
    if not rel:
        return []
    path = run_dir / rel
    try:
        return [r for r in read_jsonl(path) if isinstance(r, dict)]
    except OSError as e:  # unreadable history: skip the curve, not the report
        log.warning("cannot read history %s: %s", path, e)
        return []


def _series(rows: list[dict], metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        y = _finite(r.get(metric))
        if y is None:
            continue
        x = _finite(r.get("epoch"))
        xs.append(x if x is not None else float(i + 1))
        ys.append(y)
    return xs, ys


def plot_curves(report: dict, run_dir: Path, path: Path) -> Optional[Path]:
    histories = {}
    for role, entry in report["models"].items():
        rows = _load_history(run_dir, entry.get("history"))
        if rows:
            histories[role] = rows
    metrics = [(m, name) for m, name in CURVE_METRICS if any(_series(h, m)[1] for h in histories.values())]
    if not metrics:
        return None
    fig = _figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, name) in zip(axes, metrics):
        for role, rows in histories.items():
            xs, ys = _series(rows, metric)
            if ys:
                ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, markersize=3,
                        label=model_label(role, report["models"][role]))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{report['run']['name']}: training curves")
    return _save(fig, path)


def _seed_spread(report: dict, role: str, metric: str) -> Optional[tuple[float, float, int]]:
    """(mean, sd, n) of a role's `metric` over a run's seeds, in points; None without seeds (or one value), or when
    the seeds block compares another metric (an older report: accuracy)."""
    seeds = report.get("seeds") or {}
    if seeds.get("metric") != metric:
        return None
    st = (seeds.get("roles") or {}).get(role) or {}
    mean, sd = _finite(st.get("mean")), _finite(st.get("sd"))
    return (100.0 * mean, 100.0 * sd, st["n"]) if mean is not None and sd is not None else None


def metric_axis(primary: dict) -> tuple[str, str]:
    """(axis label, short name for titles) of the primary metric: 'accuracy (%)', 'Pearson r (x100)', or its label
    with the unit and direction ('false rejections at 1% false alarms (%, lower is better)')."""
    name = primary["name"]
    if name == "accuracy":
        return "accuracy (%)", "accuracy"
    short = primary.get("label") or name
    unit = "x100" if name in ("pearson", "spearman", "mcc", "fa_fr_auc") else "%"
    if primary.get("higher_is_better") is False:
        return f"{short} ({unit}, lower is better)", short
    return f"{short} ({unit})", short


def _scatter(report: dict, path: Path, xs_fn, xlabel: str, title: str) -> Optional[Path]:
    """The task's primary metric against a cost; a role trained over several seeds is drawn at its mean with ± 1 sd
    error bars (its cost is measured once, on the main seed's model)."""
    primary = report_primary(report)
    pts = []
    for role, entry in report["models"].items():
        x = _finite(xs_fn(entry))
        y = _finite(primary_value(entry, primary))
        if x is not None and x > 0 and y is not None:
            spread = _seed_spread(report, role, primary["name"])
            if spread:
                pts.append((x, spread[0], f"{model_label(role, entry)} (mean ± sd, {spread[2]} seeds)", spread[1]))
            else:
                pts.append((x, 100.0 * y, model_label(role, entry), 0.0))
    if not pts:
        return None
    fig = _figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    for x, y, label, err in pts:
        if err:
            ax.errorbar([x], [y], yerr=[err], fmt="o", markersize=6, capsize=4, zorder=3)
        else:
            ax.scatter([x], [y], s=40, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
    ax.set_xscale("log")
    lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
    ax.set_xlim(lo / 2, hi * 2)  # room for labels, and a sane range when there is a single point
    ylo, yhi = min(p[1] - p[3] for p in pts), max(p[1] + p[3] for p in pts)
    pad = max(1.0, 0.15 * (yhi - ylo))
    ax.set_ylim(ylo - pad, yhi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_axis(primary)[0])
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _cpu_b1(entry: dict) -> Any:
    return (((entry.get("latency") or {}).get("cpu") or {}).get("batch_1") or {}).get("median_ms")


def write_plots(report: dict, run_dir: Path) -> list[Path]:
    """Write `curves.png`, `quality_vs_macs.png`, `quality_vs_latency.png` into `run_dir` where data allows;
    returns the paths written."""
    report = validate_report(report)
    run_dir = Path(run_dir)
    name = report["run"]["name"]
    threads = {((e.get("latency") or {}).get("cpu") or {}).get("threads") for e in report["models"].values()} - {None}
    thr = f", {threads.pop()} threads" if len(threads) == 1 else ""
    metric = metric_axis(report_primary(report))[1]
    jobs = [
        ("curves.png", lambda p: plot_curves(report, run_dir, p)),
        ("quality_vs_macs.png", lambda p: _scatter(report, p, lambda e: (e.get("cost") or {}).get("macs"),
                                                   "MACs per sample (log)", f"{name}: {metric} vs MACs")),
        ("quality_vs_latency.png", lambda p: _scatter(
            report, p, _cpu_b1, f"CPU latency, batch 1, median ms (log{thr})", f"{name}: {metric} vs latency")),
    ]
    written = []
    for fname, job in jobs:
        path = run_dir / fname
        try:
            out = job(path)
        except Exception as e:  # a plot must never sink a finished run's report
            log.warning("skipping %s: %s: %s", fname, type(e).__name__, e)
            out = None
        if out is not None:
            written.append(out)
        elif path.is_file():
            path.unlink()  # stale plot from an earlier report with different data
    return written
