"""A candidate's numbers, read from its run's report.json: the same measurements every run makes, flattened into
named metrics that objectives and constraints refer to.

The candidate is what would be deployed: the KD student, or - when the trial compresses it (`compress.targets`)
- its first artifact, whose quality, size and latency replace the fp32 student's (MACs, parameters and training
time stay the student's: quantization keeps the operation count and does not retrain).
"""
from __future__ import annotations

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


def candidate_metrics(report: dict, targets: list[str], names: list[str], role: Optional[str] = None) -> dict:
    """{metric name: value} of the candidate (None where the report has no number)."""
    models = report["models"]
    role = role or candidate_role(report, targets)
    entry, student = models[role], models.get("student", {})
    out = {}
    for name in names:
        path = resolve(name, name)
        value = _get(entry, path)
        if value is None and role != "student" and path in FROM_STUDENT:
            value = _get(student, path)
        out[name] = value
    return out
