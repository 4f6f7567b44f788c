"""`leankd leaderboard DIR...`: runs and searches side by side - every model of every run directory and every
completed trial of every search directory, with the same candidate metrics, and the accuracy-vs-MACs front
across all of them. A CPU latency the run's timer marked unreliable is shown as such (a search's trial shows the
MACs-based estimate it was selected on), never as a plain number."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LeanKDError
from ..report.format import DASH, fmt_auto, fmt_pct, fmt_si
from ..report.schema import load_report
from .metrics import candidate_metrics, latency_noise
from .pareto import pareto_front
from .space import get_path

COLUMNS = ["accuracy", "macs", "params", "size_mb", "latency_ms", "train_time_s"]


def collect(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        d = Path(d)
        if (d / "search.json").exists():
            summary = json.loads((d / "search.json").read_text())
            for t in summary["trials"]:
                if t["state"] != "complete":
                    continue
                label = f"{t['rung']} {t['trial']}" + (f" seed {t['seed']}" if t["rung"] != "explore" else "")
                rows.append({"source": str(d), "kind": "search trial", "label": label,
                             "settings": settings_text(t["params"]),
                             **{c: t["metrics"].get(c) for c in COLUMNS},
                             "latency_flag": "est. from MACs" if t.get("latency_note") else None,
                             "note": t.get("latency_note")})
        elif (d / "report.json").exists():
            report = load_report(d / "report.json")
            for role, entry in report["models"].items():
                metrics = candidate_metrics(report, [], COLUMNS, role)
                noise = latency_noise(entry)
                if noise:  # shown as measured, flagged: no estimate outside a search
                    measured = get_path(entry, "latency.cpu.batch_1.median_ms")
                    metrics["latency_ms"] = measured if isinstance(measured, (int, float)) else None
                rows.append({"source": str(d), "kind": "run", "label": entry.get("label", role),
                             "settings": entry.get("architecture", ""), **metrics,
                             "latency_flag": "unreliable" if noise else None,
                             "note": f"CPU latency unreliable: {'; '.join(noise)}" if noise else None})
        else:
            raise LeanKDError(f"{d} is neither a run directory (report.json) nor a search directory (search.json): "
                              "pass directories that `leankd run` or `leankd search` made")
    front = set(pareto_front([(r["accuracy"], r["macs"]) for r in rows], ["maximize", "minimize"]))
    for i, r in enumerate(rows):
        r["front"] = i in front
    rows.sort(key=lambda r: -(r["accuracy"] if r["accuracy"] is not None else -1))
    return rows


def _accuracy(v) -> str:
    """A fraction as percent (the reports' way); another primary metric (a loss) as it is."""
    return f"{fmt_pct(v)} %" if isinstance(v, float) and 0.0 <= v <= 1.0 else fmt_auto(v)


# how each column is written: people read MACs as 864.4 K, not 8.644e+05
FORMATS = {"accuracy": _accuracy, "macs": fmt_si, "params": fmt_si,
           "size_mb": lambda v: f"{fmt_auto(v)} MB" if v is not None else DASH,
           "latency_ms": lambda v: f"{fmt_auto(v)} ms" if v is not None else DASH,
           "train_time_s": lambda v: f"{fmt_auto(v)} s" if v is not None else DASH}


def settings_text(params: dict) -> str:
    """`temperature=3.99, alpha=0.5`: a search samples floats to 16 digits, a table shows 3 significant ones."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def to_markdown(rows: list[dict]) -> str:
    head = ["source", "model / trial", "settings", *COLUMNS, "front", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = {c: FORMATS[c](r[c]) for c in COLUMNS}
        if r.get("latency_flag") and r["latency_ms"] is not None:
            cells["latency_ms"] += f" ({r['latency_flag']})"
        lines.append("| " + " | ".join([r["source"], r["label"], r["settings"], *cells.values(),
                                        "*" if r["front"] else "", r.get("note") or ""]) + " |")
    return "\n".join(lines) + "\n"
