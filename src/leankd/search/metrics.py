"""A candidate's numbers, read from its run's report.json: the same measurements every run makes, flattened into
named metrics that objectives and constraints refer to.

The candidate is what would be deployed: the KD student, or - when the trial compresses it (`compress.targets`)
- its first artifact, whose quality, size and latency replace the fp32 student's (MACs, parameters and training
time stay the student's: quantization keeps the operation count and does not retrain).

A CPU latency that the run's timer flagged as unreliable (`latency.cpu.reliable: false` in report.json: a busy
machine, rounds that disagree) is not used as a number to select on: one noisy 700 ms timing of a tiny student
would reject it under a latency constraint or sink it on a latency objective. It is replaced by an estimate from
the candidate's MACs - its MACs times the milliseconds per MAC of the base run's reliably timed models - and the
search report and leaderboard say which numbers are estimates and why. Without a reliably timed reference the
latency is left out (the trial then says it could not be judged) rather than guessed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import RecipeError
from .space import get_path

# name -> dotted path into a report model entry
ALIASES = {
    "accuracy": "quality.accuracy",
    "f1": "quality.f1_positive",
    "mcc": "quality.mcc",
    "ser": "quality.ser",
    "ter": "quality.ter",
    "loss": "quality.loss",
    "params": "cost.params",
    "size_mb": "cost.size_mb",
    "macs": "cost.macs",
    "flops": "cost.flops",
    "latency_ms": "latency.cpu.batch_1.median_ms",
    "latency_ms_b64": "latency.cpu.batch_64.median_ms",
    "train_time_s": "training.wall_time_s",
    "energy_j": "training.energy_j",
    "peak_memory_mb": "memory.inference_peak_mb",
}
# the direction that makes each metric better (for the report's wording and the front plot)
HIGHER_IS_BETTER = {"accuracy", "f1", "mcc", "quality.accuracy"}
# what the fp32 student lends a compressed artifact
FROM_STUDENT = ("cost.params", "cost.macs", "cost.flops", "training.wall_time_s", "training.energy_j")


def resolve(metric: str, where: str) -> str:
    """The dotted report path of a metric name; unknown names are an error naming `where`."""
    if metric in ALIASES:
        return ALIASES[metric]
    if metric.split(".")[0] in ("quality", "cost", "latency", "training", "memory"):
        return metric
    raise RecipeError(f"{where}: unknown metric {metric!r}; use one of {sorted(ALIASES)} or a dotted path into a "
                      "report model entry (quality.*, cost.*, latency.cpu.batch_N.median_ms, training.*, memory.*)")


def _get(entry: dict, path: str) -> Optional[float]:
    node = get_path(entry, path)
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def candidate_role(report: dict, targets: list[str]) -> str:
    """The report role of the deployed candidate: the first built artifact of the trial's targets, else the
    fp32 KD student."""
    models = report["models"]
    for target in targets:
        role = "student_" + target.replace("-", "_")
        if role in models:
            return role
    return "student"


def candidate_metrics(report: dict, targets: list[str], names: list[str], role: Optional[str] = None,
                      ms_per_mac: Optional[dict[str, Optional[float]]] = None) -> dict:
    """{metric name: value} of the candidate (None where the report has no number). An unreliable CPU latency is
    replaced by MACs x `ms_per_mac[path]` (see `reference_ms_per_mac`), or None without that figure."""
    models = report["models"]
    role = role or candidate_role(report, targets)
    entry, student = models[role], models.get("student", {})
    noisy = latency_noise(entry) is not None
    out = {}
    for name in names:
        path = resolve(name, name)
        value = _get(entry, path)
        if value is None and role != "student" and path in FROM_STUDENT:
            value = _get(student, path)
        if noisy and path.startswith(CPU_LATENCY):
            scale, macs = (ms_per_mac or {}).get(path), _get(entry, "cost.macs") or _get(student, "cost.macs")
            value = macs * scale if scale is not None and macs else None
        out[name] = value
    return out


CPU_LATENCY = "latency.cpu."


def latency_noise(entry: dict) -> Optional[list[str]]:
    """None when a model entry's CPU latency can be trusted (`latency.cpu.reliable` true, or absent: reports older
    than the flag); else the timer's reasons (`latency.cpu.noise`), never empty."""
    cpu = get_path(entry, "latency.cpu")
    if not isinstance(cpu, dict) or cpu.get("reliable", True) is not False:
        return None
    return [str(r) for r in cpu.get("noise") or []] or ["the timer marked it unreliable"]


def reference_ms_per_mac(report: dict, paths: list[str]) -> dict[str, Optional[float]]:
    """Per CPU latency path: the median of latency / MACs over the report's fp32 models whose latency is reliable
    (the base run's teacher, baseline and KD student) - what turns a candidate's MACs into a latency estimate
    when its own timing is noise. None for a path no reliable model has."""
    import statistics

    out: dict[str, Optional[float]] = {}
    for path in paths:
        ratios = [_get(e, path) / _get(e, "cost.macs") for e in report["models"].values()
                  if not e.get("artifact") and latency_noise(e) is None and _get(e, path) and _get(e, "cost.macs")]
        out[path] = statistics.median(ratios) if ratios else None
    return out


def latency_fallback_note(report: dict, targets: list[str], names: list[str], role: Optional[str] = None,
                          ms_per_mac: Optional[dict[str, Optional[float]]] = None) -> Optional[str]:
    """What `candidate_metrics` did with an unreliable CPU latency, for the leaderboard and report; None when the
    candidate's latency was used as measured (or no latency metric is asked for)."""
    role = role or candidate_role(report, targets)
    reasons = latency_noise(report["models"][role])
    latency = [n for n in names if resolve(n, n).startswith(CPU_LATENCY)]
    if reasons is None or not latency:
        return None
    scales = ms_per_mac or {}
    estimated = [n for n in latency if scales.get(resolve(n, n)) is not None]
    missing = [n for n in latency if n not in estimated]
    text = f"CPU latency unreliable ({'; '.join(reasons)}): "
    if estimated:
        text += ", ".join(f"{n} estimated from MACs x {scales[resolve(n, n)]:.3g} ms/MAC" for n in estimated) + \
            " (the base run's reliably timed models)"
    if missing:
        text += ("; " if estimated else "") + ", ".join(missing) + " left out (no reliably timed model to " \
            "estimate it from): time the runs again on a quiet machine"
    return text


# ------------------------------------------ read by both the runner and the search report (neither imports the other)
def selection_value(metrics: dict, metric: str) -> Optional[float]:
    """What the search selects on: validation accuracy where an objective says accuracy (the test split is only
    reported, never optimized), else the metric itself."""
    if metric == "accuracy" and metrics.get("val_accuracy") is not None:
        return metrics["val_accuracy"]
    return metrics.get(metric)


def params_key(params: Optional[dict]) -> str:
    """A candidate's settings as one key: the runs of one candidate (its seeds) group under it."""
    return json.dumps(params or {}, sort_keys=True, default=str)


def last_val_accuracy(history: Path) -> Optional[float]:
    """The last epoch's validation accuracy of a stage (None without a validation split or history)."""
    if not history.exists():
        return None
    lines = [line for line in history.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]).get("val_accuracy") if lines else None
