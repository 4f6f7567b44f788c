"""Figures derived from the measured ones: the ratios of `report.json` (x smaller, x faster, retention, KD gain),
the primary metric a report is judged by and each model's value of it. Tolerant by design: a missing, null or
non-finite input gives None, never an exception, as reports of unfinished runs are rendered too. Split from `schema`
(issue 24): the schema validates, this computes; `build_report` calls `compute_ratios`."""
from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel

from leankd.report.base import _BATCH_KEY, BASELINE_ROLE, STUDENT_ROLE, TEACHER_ROLE


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, BaseModel):
            d = getattr(d, k, None)
        elif isinstance(d, dict):
            d = d.get(k)
        else:
            return None
        if d is None:
            return None
    return d


def _num(x: Any) -> Optional[float]:
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ratio(num: Any, den: Any) -> Optional[float]:
    a, b = _num(num), _num(den)
    if a is None or b is None or b <= 0 or a < 0:
        return None
    return round(a / b, 4)


def _latency_batches(entry: Any, device: str) -> dict[str, Any]:
    lat = _get(entry, "latency", device)
    if isinstance(lat, BaseModel):
        lat = lat.model_dump()
    if not isinstance(lat, dict):
        return {}
    return {k: v for k, v in lat.items() if _BATCH_KEY.match(k)}


def _batch_sort_key(k: str) -> int:
    return int(_BATCH_KEY.match(k).group(1))


def latency_reliable(entry: Any, device: str = "cpu") -> bool:
    """False only when the entry's latency block on `device` says `reliable: false` (absent = reliable)."""
    return _get(entry, "latency", device, "reliable") is not False


def primary_value(entry: Any, primary: Optional[dict]) -> Optional[float]:
    """The entry's value of the task's primary metric (None when the task declared none or it was not measured)."""
    name = _get(primary, "name")
    return _num(_get(entry, "quality", name)) if name else None


def report_primary(report: Any) -> dict:
    """The primary metric a report is judged by (`{name, higher_is_better, label, ...}`): `run.dataset.primary_metric`,
    or, for a report written before tasks declared one, its headline figure: accuracy (Pearson r for regression)."""
    primary = _get(report, "run", "dataset", "primary_metric")
    if isinstance(primary, BaseModel):
        primary = primary.model_dump(exclude_none=True)
    if isinstance(primary, dict) and primary.get("name"):
        return primary
    models = _get(report, "models") or {}
    regression = any(_get(e, "quality", "accuracy") is None and _num(_get(e, "quality", "pearson")) is not None
                     for e in models.values())
    if regression:
        return {"name": "pearson", "higher_is_better": True, "label": "Pearson r"}
    return {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}


def seeds_primary(report: Any) -> Optional[dict]:
    """The metric a report's `seeds` block compares, as `{name, higher_is_better, label}` (None without seeds): the
    primary metric for reports that record its direction, else (older reports) accuracy or Pearson r."""
    seeds = _get(report, "seeds")
    name = _get(seeds, "metric")
    if not name:
        return None
    label = _get(seeds, "label") or ("Pearson r" if name == "pearson" else name)
    return {"name": name, "higher_is_better": _get(seeds, "higher_is_better") is not False, "label": label}


def primary_gain(better: Any, worse: Any, primary: Optional[dict]) -> Optional[float]:
    """`better` minus `worse` on the primary metric in points (x100), signed so positive means `better` is better."""
    a, b = primary_value(better, primary), primary_value(worse, primary)
    if a is None or b is None:
        return None
    sign = 1.0 if _get(primary, "higher_is_better") is not False else -1.0
    return round(100.0 * sign * (a - b), 4)


def _versus(ref: Optional[dict], entry: dict, primary: Optional[dict] = None) -> dict[str, Any]:
    """`entry` against a reference model: × smaller / fewer / faster and accuracy retention and delta."""
    r: dict[str, Optional[float]] = {
        "size_x_smaller": _ratio(_get(ref, "cost", "size_bytes"), _get(entry, "cost", "size_bytes")),
        "params_x_fewer": _ratio(_get(ref, "cost", "params"), _get(entry, "cost", "params")),
        "macs_x_fewer": _ratio(_get(ref, "cost", "macs"), _get(entry, "cost", "macs")),
        "memory_x_less": _ratio(_get(ref, "memory", "model_memory_mb"), _get(entry, "memory", "model_memory_mb")),
        "latency_cpu_x_faster_batch_1": None,
        "latency_cpu_x_faster_batch_64": None,
    }
    noisy = []
    for device in ("cpu", "cuda"):
        t_b, s_b = _latency_batches(ref, device), _latency_batches(entry, device)
        unreliable = not latency_reliable(ref, device) or not latency_reliable(entry, device)
        for key in sorted(set(t_b) & set(s_b), key=_batch_sort_key):
            ratio = _ratio(_get(t_b[key], "median_ms"), _get(s_b[key], "median_ms"))
            if unreliable and ratio is not None:  # not a fact: left out, and named so the report can say why
                noisy.append(f"latency_{device}_x_faster_{key}")
                ratio = None
            r[f"latency_{device}_x_faster_{key}"] = ratio
    if noisy:
        r["unreliable_latency"] = noisy
    t_acc, s_acc = headline(ref), headline(entry)
    r["accuracy_retention_pct"] = _ratio(s_acc, t_acc)
    if r["accuracy_retention_pct"] is not None:
        r["accuracy_retention_pct"] = round(100.0 * s_acc / t_acc, 4)
    r["accuracy_delta_points"] = round(100.0 * (s_acc - t_acc), 4) if s_acc is not None and t_acc is not None else None
    if primary is not None:
        r["primary_delta_points"] = primary_gain(entry, ref, primary)
    return r


def compute_ratios(models: dict, primary: Optional[dict] = None) -> dict:
    """Every non-teacher role versus the teacher, every artifact versus the fp32 model it came from, plus the KD
    gain of `student` over `baseline` (in points). `primary` (the task's `run.dataset.primary_metric`) adds the same
    comparisons on that metric, signed so that positive is better.

    Missing, null, non-finite or zero inputs make that ratio null; nothing here raises on incomplete data.
    """
    models = models or {}
    teacher = models.get(TEACHER_ROLE)
    vs_teacher = {role: _versus(teacher, entry, primary) for role, entry in models.items() if role != TEACHER_ROLE}
    vs_base = {}
    for role, entry in models.items():
        base = _get(entry, "artifact", "base_role")
        if base is not None:
            ref = models.get(base)
            timed_with = _get(entry, "artifact", "reference_latency")  # the base re-timed beside this artifact
            if isinstance(ref, dict) and timed_with is not None:
                ref = {**ref, "latency": timed_with}
            vs_base[role] = _versus(ref, entry, primary)

    def gain(metric: str) -> Optional[float]:
        s = _num(_get(models.get(STUDENT_ROLE), "quality", metric))
        b = _num(_get(models.get(BASELINE_ROLE), "quality", metric))
        return round(100.0 * (s - b), 4) if s is not None and b is not None else None

    s, b = headline(models.get(STUDENT_ROLE)), headline(models.get(BASELINE_ROLE))
    return {"vs_teacher": vs_teacher, "vs_base": vs_base,
            "kd_gain_points": round(100.0 * (s - b), 4) if s is not None and b is not None else None,
            "kd_gain_macro_f1_points": gain("macro_f1"),
            **({"primary_metric": _get(primary, "name"),
                "kd_gain_primary_points": primary_gain(models.get(STUDENT_ROLE), models.get(BASELINE_ROLE), primary)}
               if primary is not None else {})}


def headline(entry: Optional[dict]) -> Optional[float]:
    """The quality figure that ratios, gains and drops compare: accuracy, or Pearson r for regression tasks (the
    `accuracy_*` ratio keys and `kd_gain_points` then hold Pearson r, in points of 1/100)."""
    acc = _num(_get(entry, "quality", "accuracy"))
    return acc if acc is not None else _num(_get(entry, "quality", "pearson"))
