"""What a finished trial scored, and how its study records that: the candidate's metrics read from its run's
report.json (an estimate from MACs standing in for a CPU latency that was noise), its objective values, how far it
is from each constraint, and the Optuna bookkeeping of the result (user attributes, constraints for the sampler, the
tell). A mixin of `Search` (runner.py), kept apart from running trials and from choosing which to run.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from ..report.schema import load_report
from .config import SearchConfig
from .metrics import (CPU_LATENCY, candidate_metrics, last_val_accuracy, latency_fallback_note, reference_ms_per_mac,
                      resolve, selection_value)


class Scoring:
    """Scores of one search's trials: uses the `Search` attributes below."""

    cfg: SearchConfig
    dir: Path
    metrics: list[str]
    studies: dict[str, optuna.Study]
    _ms_per_mac: Optional[dict[str, Optional[float]]]

    def _measure(self, report: dict, raw: dict, run_dir: Path, role: str = "student") -> tuple[dict, Optional[str]]:
        """The candidate's metrics, plus its last epoch's validation accuracy (what the search selects on), and a
        note when its CPU latency was noise and an estimate from MACs (or nothing) stands in for it."""
        targets = list(raw.get("compress", {}).get("targets", [])) if role == "student" else []
        which = None if role == "student" else role
        metrics = candidate_metrics(report, targets, self.metrics, which, self.ms_per_mac())
        metrics["val_accuracy"] = last_val_accuracy(run_dir / role / "metrics.jsonl")
        return metrics, latency_fallback_note(report, targets, self.metrics, which, self.ms_per_mac())

    def ms_per_mac(self) -> dict[str, Optional[float]]:
        """Per CPU latency metric: milliseconds per MAC of the base run's reliably timed models (what an
        unreliable trial latency is estimated from); read once, after the base run."""
        if self._ms_per_mac is None:
            path = self.dir / "base" / "report.json"
            if not path.exists():
                return {}
            paths = [resolve(m, m) for m in self.metrics if resolve(m, m).startswith(CPU_LATENCY)]
            self._ms_per_mac = reference_ms_per_mac(load_report(path), paths)
        return self._ms_per_mac

    def _values(self, metrics: dict) -> Optional[list[float]]:
        values = [selection_value(metrics, o.metric) for o in self.cfg.objectives]
        return None if any(v is None for v in values) else [float(v) for v in values]

    def _violations(self, metrics: dict) -> list[float]:
        out = []
        for c in self.cfg.constraints:
            v = metrics.get(c.metric)
            if v is None:
                out.append(1.0)  # not measured: cannot be shown to satisfy it
                continue
            out.append(max(v - c.max if c.max is not None else -math.inf,
                           c.min - v if c.min is not None else -math.inf))
        return out

    def _finish(self, study: optuna.Study, trial_id: int, number: int, run_dir: Path, metrics: dict,
                started: float, latency_note: Optional[str] = None) -> None:
        storage = study._storage
        violations = self._violations(metrics)
        for key, value in {"run_dir": str(run_dir.relative_to(self.dir)), "metrics": metrics,
                           "violations": violations, "latency_note": latency_note,
                           "duration_s": round(time.perf_counter() - started, 2),
                           **dashboard_attrs(metrics, storage.get_trial(trial_id).user_attrs.get("params"))}.items():
            if value is not None:
                storage.set_trial_user_attr(trial_id, key, value)
        if study is self.studies["explore"] and self.cfg.constraints:  # the sampler learns what is feasible
            trial = optuna.Trial(study, trial_id)
            for i, v in enumerate(violations):
                trial.set_constraint(f"c{i}", v)
        values = self._values(metrics)
        if values is None:
            storage.set_trial_user_attr(trial_id, "error", "an objective was not measured"
                                        + (f" ({latency_note})" if latency_note else ""))
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, values)


def dashboard_attrs(metrics: dict, params: Optional[dict]) -> dict:
    """One user attribute per measured metric (`metric.accuracy`, `metric.macs`) and per setting
    (`setting.distill.temperature`), beside the JSON `metrics`/`params` the search itself reads: optuna-dashboard and
    `trials_dataframe()` show each as its own column, and trials of the full-budget and confirmation rungs (queued
    with fixed settings, so Optuna holds no params for them) show what they ran."""
    attrs = {f"metric.{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    attrs.update({f"setting.{k}": v for k, v in (params or {}).items()})
    return attrs
