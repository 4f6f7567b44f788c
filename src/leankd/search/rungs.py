"""The later rungs of the search, full and confirm, as job queues every worker drains: which first-rung candidates
go on to the full budget (successive halving), which full-budget candidates are confirmed with fresh seeds beside a
baseline, and which of them count. A mixin of `Search` (runner.py), kept apart from the sampler-driven first rung
and from running and scoring one trial (runs.py, scoring.py).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..recipe import Recipe
from .config import SearchConfig
from .metrics import params_key
from .pareto import pareto_front, select_for_promotion
from .runs import short
from .study import POLL_S, active, claim_waiting


class LaterRungs:
    """The full and confirm rungs of one search: uses the `Search` attributes below and its `log`, `recover`,
    `trial_recipe`, `run_trial`, `_lock`, `_measure` and `_finish`."""

    recipe: Recipe
    cfg: SearchConfig
    directions: list[str]
    studies: dict[str, optuna.Study]

    def promote_limit(self) -> int:
        return self.cfg.promote_max or max(1, math.ceil(self.cfg.trials / 3))

    def _feasible_complete(self, study: optuna.Study) -> list[FrozenTrial]:
        return [t for t in active(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                if all(v <= 0 for v in t.user_attrs.get("violations", []))]

    def promote(self) -> None:
        """Successive halving over the first rung: its non-dominated feasible candidates go to the full budget."""
        explore, full = self.studies["explore"], self.studies["full"]
        with self._lock("queue"):
            done = self._feasible_complete(explore)
            points = [list(t.values) for t in done]
            if len(self.directions) == 1:  # one objective: the best third (the classic halving)
                order = sorted(range(len(done)), key=lambda i: points[i][0],
                               reverse=self.directions[0] == "maximize")
                chosen = order[:self.promote_limit()]
            else:
                chosen = select_for_promotion(points, self.directions, self.promote_limit())
            queued = {(params_key(t.user_attrs.get("params")), t.user_attrs.get("seed", self.recipe.seed))
                      for t in active(full.get_trials(deepcopy=False))}
            for i in chosen:  # the same settings sampled twice are promoted once
                for seed in self.full_seeds():
                    key = (params_key(done[i].user_attrs["params"]), seed)
                    if key not in queued:
                        queued.add(key)
                        full.enqueue_trial({}, user_attrs={"source": done[i].number, "seed": seed,
                                                           "params": done[i].user_attrs["params"]})
        self._drain(full, lambda job: (self.trial_recipe(job["params"], "full", job.get("seed")), None))

    def full_seeds(self) -> list[int]:
        return [self.recipe.seed + k for k in range(self.cfg.full_seeds)]

    def confirm(self) -> None:
        """The best full-budget front candidates with more seeds, each beside a same-budget baseline."""
        confirm = self.studies["confirm"]
        with self._lock("queue"):
            keys = {t.user_attrs.get("key") for t in active(confirm.get_trials(deepcopy=False))}
            for trial in self.best_full_candidates():
                for k in range(self.cfg.confirm_seeds):  # fresh seeds only: the search-time runs were selected
                    seed = self.recipe.seed + self.cfg.full_seeds + k
                    key = f"{trial.number}:{seed}"
                    if key not in keys:
                        confirm.enqueue_trial({}, user_attrs={"key": key, "source": trial.number, "seed": seed,
                                                              "params": trial.user_attrs["params"]})
        self._drain(confirm, lambda job: (self.trial_recipe(job["params"], "confirm", job["seed"], baseline=True),
                                          True))

    def best_full_candidates(self) -> list[FrozenTrial]:
        """The full-budget Pareto front (of the selection values), best first by the first objective,
        `confirm_top` of them."""
        done = self.full_candidates()
        front = [done[i] for i in pareto_front([values for _, values in done], self.directions)]
        front.sort(key=lambda c: c[1][0], reverse=self.directions[0] == "maximize")
        return [trial for trial, _ in front[:self.cfg.confirm_top]]

    def full_candidates(self) -> list[tuple[FrozenTrial, list[float]]]:
        """Each full-budget candidate as (its first run, its selection values averaged over its seeds); one with a
        failed seed, or whose run broke a constraint at any seed, is left out."""
        groups: dict[str, list[FrozenTrial]] = {}
        for t in active(self.studies["full"].get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
            groups.setdefault(params_key(t.user_attrs.get("params")), []).append(t)
        out = []
        for runs in groups.values():
            if len(runs) < self.cfg.full_seeds:  # a seed failed: one seed's luck would decide again
                continue
            if any(v > 0 for t in runs for v in t.user_attrs.get("violations", [])):
                continue
            runs.sort(key=lambda t: t.number)
            out.append((runs[0], [statistics.fmean(v) for v in zip(*(t.values for t in runs))]))
        return out

    def _drain(self, study: optuna.Study, recipe_of: Callable[[dict], tuple[dict, Optional[str]]]) -> None:
        """Run queued jobs until none is waiting, then wait for other workers' running ones."""
        while True:
            trial = claim_waiting(study)
            if trial is None:
                running = active(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if not running:
                    return
                self.recover()
                time.sleep(POLL_S)
                continue
            started = time.perf_counter()
            self.log(f"{study.study_name.split(':')[-1]} job {trial.number}: {short(trial.user_attrs['params'])}"
                     + (f" seed {trial.user_attrs['seed']}" if "seed" in trial.user_attrs else ""))
            try:
                raw, with_baseline = recipe_of(trial.user_attrs)
                run_dir, report = self.run_trial(raw)
            except Exception as e:  # noqa: BLE001 - recorded on the trial, the search goes on
                study._storage.set_trial_user_attr(trial._trial_id, "error", f"{type(e).__name__}: {e}")
                study.tell(trial.number, state=TrialState.FAIL)
                self.log(f"[yellow]{study.study_name} job {trial.number} failed:[/] {type(e).__name__}: {e}")
                continue
            metrics, note = self._measure(report, raw, run_dir)
            if with_baseline:  # the KD gain compares fp32 with fp32, whatever the candidate ships as
                metrics["student_accuracy"] = report["models"]["student"]["quality"].get("accuracy")
                study._storage.set_trial_user_attr(trial._trial_id, "baseline_metrics",
                                                   self._measure(report, raw, run_dir, "baseline")[0])
            self._finish(study, trial._trial_id, trial.number, run_dir, metrics, started, note)
