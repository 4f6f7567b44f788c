"""Plots for the report: training curves and scatters of the task's primary metric against a cost.

Curves keep apart what is not one quantity: cross-entropy (plain-CE training and every validation loss) and a KD
student's training objective (its KD term carries the T² factor) get their own axes, accuracy is in % as in the
report, epochs are whole numbers. Scatters draw every point as an errorbar (latency: the spread of the timing rounds;
seeds: ± 1 sd) and place labels so that they do not overlap when `compress`/`export` add points next to the student.
`curves_figure`/`scatter_figure` return the Figure (tests inspect it); the `plot_*` functions save it.

Uses matplotlib's object-oriented API (`matplotlib.figure.Figure`, rendered by Agg) and never pyplot, so no
display, no global backend switch and no figure leaks. Every file is written atomically. A plot whose data is
missing is skipped (and a stale copy from an earlier run removed, so `report.md` never links outdated pictures).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Optional

from leankd.io import atomic_path, read_jsonl
from leankd.report.figures import primary_value, report_primary
from leankd.report.format import model_label
from leankd.report.schema import validate_report

log = logging.getLogger(__name__)

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


def _plain_ce(entry: dict) -> bool:
    """Whether a role trained on plain cross-entropy ("ce", "ce(ls=0.1)"): its train loss is then comparable with
    every role's val loss; a distillation objective (KD with its T² factor, feature terms) is not."""
    loss = (entry.get("training") or {}).get("loss")
    return loss is None or re.fullmatch(r"ce(\(.*\))?", loss.strip()) is not None


def curves_figure(report: dict, run_dir: Path):
    """The training curves as a matplotlib Figure (None without history): cross-entropy (the plain-CE roles' train
    loss and every role's val loss), the distillation objective (KD students' train loss, T²-scaled: another
    quantity, so another axis) and val accuracy in % as in the report; epochs on integer ticks."""
    from matplotlib.ticker import MaxNLocator

    histories = {}
    for role, entry in report["models"].items():
        rows = _load_history(run_dir, entry.get("history"))
        if rows:
            histories[role] = rows
    models = report["models"]
    ce_roles = [r for r in histories if _plain_ce(models[r])]
    kd_roles = [r for r in histories if not _plain_ce(models[r])]
    kd_losses = sorted({models[r]["training"]["loss"] for r in kd_roles})
    panels = [  # (title, y label, [(role, metric, line style, legend suffix)], scale)
        ("cross-entropy", "cross-entropy", [(r, "train_loss", "-", " train") for r in ce_roles]
         + [(r, "val_loss", "--", " val") for r in histories], 1.0),
        ("distillation objective (train)", "loss (KD term includes T²)" if len(kd_losses) != 1
         else f"{kd_losses[0]} (KD term includes T²)", [(r, "train_loss", "-", "") for r in kd_roles], 1.0),
        ("val accuracy", "val accuracy (%)", [(r, "val_accuracy", "-", "") for r in histories], 100.0),
    ]
    panels = [p for p in panels if any(_series(histories[r], m)[1] for r, m, _, _ in p[2])]
    if not panels:
        return None
    fig = _figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, ylabel, lines, scale) in zip(axes, panels):
        for color, (role, metric, style, suffix) in zip(_role_colors(histories, lines), lines):
            xs, ys = _series(histories[role], metric)
            if ys:
                ax.plot(xs, [scale * y for y in ys], style, color=color, marker="o" if len(ys) < 30 else None,
                        markersize=3, label=model_label(role, models[role]) + suffix)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers (one too)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{report['run']['name']}: training curves")
    return fig


def _role_colors(histories: dict, lines: list) -> list[str]:
    """One colour per role across the panels (a role's train and val lines share it)."""
    order = list(histories)
    return [f"C{order.index(role) % 10}" for role, *_ in lines]


def plot_curves(report: dict, run_dir: Path, path: Path) -> Optional[Path]:
    fig = curves_figure(report, run_dir)
    return _save(fig, path) if fig is not None else None


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


# label offsets (points) tried in this order around a point: right/left, above/below, then further out
_LABEL_OFFSETS = [(dx * k, dy * k) for k in (1, 2, 3, 4, 6) for dx, dy in
                  ((6, 5), (6, -13), (-6, 5), (-6, -13), (0, 11), (0, -19))]


def _place_labels(fig, labels: list) -> None:
    """Move each point label (an `Annotation`) to the first offset in `_LABEL_OFFSETS` where its box meets no label
    placed before it (points taken left to right, so the result is deterministic); where none is free, the offset
    overlapping least. The layout is drawn once first and then frozen, so the boxes measured are the final ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    for a in labels:
        a.set_in_layout(False)  # labels must not move the axes once they are placed
    canvas.draw()
    fig.set_layout_engine("none")
    renderer = canvas.get_renderer()
    placed = []
    for a in sorted(labels, key=lambda a: (a.xy[0], a.xy[1])):
        best = None
        for dx, dy in _LABEL_OFFSETS:
            a.set_position((dx, dy))
            a.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
            overlap = sum(_overlap_area(a.get_window_extent(renderer).padded(1), other) for other in placed)
            if best is None or overlap < best[0]:
                best = (overlap, (dx, dy), a.get_horizontalalignment())
            if overlap == 0:
                break
        a.set_position(best[1])
        a.set_horizontalalignment(best[2])
        placed.append(a.get_window_extent(renderer).padded(1))


def _overlap_area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def scatter_figure(report: dict, xs_fn, xlabel: str, title: str, xerr_fn=None):
    """The task's primary metric against a cost, as a matplotlib Figure (None without points). Every point is an
    errorbar: ± 1 sd over the seeds vertically for a role trained over several seeds (drawn at its mean; its cost is
    measured once, on the main seed's model), and horizontally `xerr_fn(entry)` = (below, above) where the cost has
    a measured spread (latency: the range of the per-round fastest blocks). Labels are placed so they do not
    overlap (`_place_labels`)."""
    primary = report_primary(report)
    pts = []
    for role, entry in report["models"].items():
        x = _finite(xs_fn(entry))
        y = _finite(primary_value(entry, primary))
        if x is not None and x > 0 and y is not None:
            xerr = xerr_fn(entry) if xerr_fn is not None else None
            spread = _seed_spread(report, role, primary["name"])
            if spread:
                pts.append((x, spread[0], f"{model_label(role, entry)} (mean ± sd, {spread[2]} seeds)", spread[1],
                            xerr))
            else:
                pts.append((x, 100.0 * y, model_label(role, entry), 0.0, xerr))
    if not pts:
        return None
    fig = _figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    labels = []
    for i, (x, y, label, err, xerr) in enumerate(pts):
        ax.errorbar([x], [y], yerr=[err] if err else None, xerr=[[xerr[0]], [xerr[1]]] if xerr else None,
                    fmt="o", color=f"C{i % 10}", markersize=6, capsize=4, zorder=3)
        labels.append(ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9))
    ax.set_xscale("log")
    lo = min(max(p[0] - (p[4] or (0, 0))[0], p[0] / 4) for p in pts)  # a bar reaching 0 must not stretch the axis
    hi = max(p[0] + (p[4] or (0, 0))[1] for p in pts)
    ax.set_xlim(lo / 2, hi * 2)  # room for labels, and a sane range when there is a single point
    ylo, yhi = min(p[1] - p[3] for p in pts), max(p[1] + p[3] for p in pts)
    pad = max(1.0, 0.15 * (yhi - ylo))
    ax.set_ylim(ylo - pad, yhi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_axis(primary)[0])
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _place_labels(fig, labels)
    return fig


def _scatter(report: dict, path: Path, xs_fn, xlabel: str, title: str, xerr_fn=None) -> Optional[Path]:
    fig = scatter_figure(report, xs_fn, xlabel, title, xerr_fn)
    return _save(fig, path) if fig is not None else None


def _cpu_b1(entry: dict) -> Any:
    return (((entry.get("latency") or {}).get("cpu") or {}).get("batch_1") or {}).get("median_ms")


def _cpu_b1_spread(entry: dict) -> Optional[tuple[float, float]]:
    """(below, above) the median of the CPU batch-1 latency: the fastest and slowest of the per-round fastest
    blocks (`round_ms`, the rounds `median_ms` is the median of); older reports without rounds: min and p90 of
    the calls. None when neither is there."""
    stats = (((entry.get("latency") or {}).get("cpu") or {}).get("batch_1") or {})
    median = _finite(stats.get("median_ms"))
    if median is None:
        return None
    fastest = [min(r) for r in stats.get("round_ms") or [] if r]
    lo, hi = (min(fastest), max(fastest)) if fastest else (_finite(stats.get("min_ms")), _finite(stats.get("p90_ms")))
    if lo is None or hi is None:
        return None
    return max(0.0, median - lo), max(0.0, hi - median)


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
            report, p, _cpu_b1, f"CPU latency, batch 1, median ms (log{thr}; bars: per-round range)",
            f"{name}: {metric} vs latency", xerr_fn=_cpu_b1_spread)),
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
