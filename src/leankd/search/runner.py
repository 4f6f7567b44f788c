"""`leankd search`: Optuna over a recipe's settings, every trial an ordinary leankd run, measured like any run.

Where the time goes (and why the search is honest):

1. **base** - the starting recipe once, in `<dir>/base`: the teacher (trained or loaded once for every trial; its
   cached outputs, with `teacher.cache`, are shared through `<dir>/teacher_cache`), the baseline student and the
   starting KD student at the full budget.
2. **explore** - `search.trials` trials at a cheap first rung (`rung_fraction` of the epochs), each a run in
   `<dir>/trials/<hash>` that loads the teacher. Single-objective searches also prune trials by their
   per-epoch validation accuracy (Optuna's median pruner); multi-objective Optuna cannot prune.
3. **full** - successive halving by hand: the non-dominated first-rung candidates (at most `promote_max`, the
   most isolated first) re-run at the full budget, with `full_seeds` seeds each (a candidate = their mean).
4. **confirm** - the best `confirm_top` full-budget front candidates re-run with `confirm_seeds` fresh seeds, each
   beside a baseline of the same student trained alone with the same budget and seed.
5. **report** - leaderboard, Pareto front (table + plots) and the experiment report, every number read from the
   runs' report.json files (report.py).

Every run uses the base run's data split (`data.split_seed`): a seed changes the training, not the examples.

A killed search resumes with `--resume`: finished trials are in the study; a trial cut off mid-training is queued
again and, having the same settings, resumes from its run directory's checkpoint.
"""
from __future__ import annotations

import os
import signal
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from ..errors import LeanKDError, RecipeError
from ..recipe import Recipe, dump_recipe
from .config import SearchConfig
from .metrics import resolve
from .rungs import LaterRungs
from .runs import TrialRuns, same_recipe, short
from .scoring import Scoring
from .space import check_space, setting_key, space_size, suggest, untried_setting
from .study import (MAX_RESAMPLE, POLL_S, RUNGS, active, duplicate_of, make_sampler, open_storage, recover_stale,
                    sampler_seed, worker_id)


class Search(TrialRuns, Scoring, LaterRungs):
    """One search: its set-up, the first rung, and the order of the phases. How a trial becomes a run, how it is
    scored and recorded, and the later rungs' queues are the mixins' (runs.py, scoring.py, rungs.py)."""

    def __init__(self, recipe: Recipe, search_dir: Path, *, resume: bool = False, force: bool = False,
                 storage: Optional[str] = None, quiet: bool = False, console: Optional[Console] = None,
                 kill_after_trials: Optional[int] = None):
        if recipe.search is None:
            raise RecipeError("this recipe has no search: section; add one (search.space, search.objectives, "
                              "search.trials) - see docs/search.md")
        # Optuna logs every finished trial at INFO ("[I ...] Trial 3 finished with values ..."): the search prints
        # its own line per job, so Optuna's would only repeat it in another format
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.recipe, self.cfg = recipe, recipe.search
        self.dir = Path(search_dir)
        self.resume, self.force, self.quiet = resume, force, quiet
        self.storage_url = storage
        self.console = console or Console()
        # tests: SIGKILL this process in the student's first epoch of the trial after this many explore trials
        self.kill_after_trials = kill_after_trials
        self.budget_stop: Optional[int] = None  # explore trials when the time budget stopped the first rung
        self.space_exhausted: Optional[int] = None  # explore trials when no untried settings were left
        self._ms_per_mac: Optional[dict[str, Optional[float]]] = None  # see ms_per_mac()
        self.metrics = list(dict.fromkeys([o.metric for o in self.cfg.objectives] +
                                          [c.metric for c in self.cfg.constraints] +
                                          ["accuracy", "macs", "params", "size_mb", "latency_ms", "train_time_s"]))
        for i, o in enumerate(self.cfg.objectives):
            resolve(o.metric, f"search.objectives[{i}].metric")
        for i, c in enumerate(self.cfg.constraints):
            resolve(c.metric, f"search.constraints[{i}].metric")
        self.directions = [o.direction for o in self.cfg.objectives]
        self.base_raw = recipe.model_dump(exclude={"search"}, exclude_none=True)
        self.started = time.perf_counter()

    def log(self, msg: str) -> None:
        if not self.quiet:
            from ..markup import safe  # brackets in messages are text, not markup

            self.console.print(safe(msg), highlight=False, soft_wrap=True)

    # ---------------------------------------------------------------------------------------------- set-up
    def prepare(self) -> None:
        check_space(self.recipe, self.cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / "recipe.yaml"
        text = dump_recipe(self.recipe)
        if saved.exists() and not self.force:
            if not same_recipe(saved, self.recipe):
                raise LeanKDError(f"{self.dir} holds a search of another recipe ({saved}): use another directory, "
                                  "or --force to start over")
            if not self.resume and self.storage_url is None:
                raise LeanKDError(f"a search already exists in {self.dir}: --resume continues it (finished trials "
                                  "are kept), --force starts over")
        if self.force and self.storage_url is None:
            (self.dir / "study.journal").unlink(missing_ok=True)
        elif self.force:  # a shared RDB: drop this search's studies
            storage = open_storage(self.dir, self.storage_url)
            for rung in RUNGS:
                try:
                    optuna.delete_study(study_name=f"{self.recipe.name}:{rung}", storage=storage)
                except KeyError:
                    pass
        from ..io import write_text_atomic

        write_text_atomic(saved, text)
        self.storage = open_storage(self.dir, self.storage_url)
        n = len(self.cfg.objectives)
        sampler = make_sampler(self.cfg.sampler, n, self.cfg.seed, self.cfg.trials)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1) if self._prunable() else None
        name = self.recipe.name
        self.studies = {}
        for rung in RUNGS:
            self.studies[rung] = optuna.create_study(
                study_name=f"{name}:{rung}", storage=self.storage, directions=self.directions, load_if_exists=True,
                sampler=sampler if rung == "explore" else optuna.samplers.RandomSampler(seed=self.cfg.seed),
                pruner=pruner if rung == "explore" else optuna.pruners.NopPruner())
            # optuna-dashboard and study.trials_dataframe() name the objectives ("accuracy", "macs"), not 0, 1
            with warnings.catch_warnings():  # "experimental since 3.2": stable in use, still flagged in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.studies[rung].set_metric_names([o.metric for o in self.cfg.objectives])
        self.recover()

    def recover(self) -> None:
        with self._lock("queue"):
            for study in self.studies.values():
                recover_stale(study, self.log)

    def _prunable(self) -> bool:
        """Single objective on accuracy: per-epoch validation accuracy is a fair early signal of it."""
        return len(self.cfg.objectives) == 1 and self.cfg.objectives[0].metric == "accuracy"

    # ----------------------------------------------------------------------------------- the first rung
    def explore(self) -> None:
        study = self.studies["explore"]
        done_here = 0
        while True:
            with self._lock("queue"):  # count and ask together: N workers must not overshoot search.trials
                trials = active(study.get_trials(deepcopy=False))
                if not any(t.state == TrialState.WAITING for t in trials):  # re-queued trials always run
                    if len(trials) >= self.cfg.trials:
                        return
                    if not self._time_left_for_another(trials):
                        self.budget_stop = len(trials)
                        self.log(f"explore: stopping after {len(trials)} trials: the rest of the search would not "
                                 f"fit search.time_budget_min = {self.cfg.time_budget_min}")
                        return
                asked = self._ask(study)
                if asked is None:
                    return
                trial, params = asked
            kill = self.kill_after_trials is not None and done_here >= self.kill_after_trials
            self._run_explore_trial(study, trial, params, kill)
            done_here += 1

    def _ask(self, study: optuna.Study) -> Optional[tuple[optuna.Trial, dict]]:
        """A new first-rung trial and its parameters, never settings the study already holds. The proposal comes
        from the sampler seeded by (search seed, trials so far) - a resumed search does not replay the first
        run's proposals; one that still repeats an earlier trial's settings (complete, running, failed, or cut
        off by a kill) is recorded as a skipped duplicate, and the next proposal is random (a continuous space)
        or an untried setting (a finite one: TPE on a few choices converges on its best and repeats it). A
        re-queued trial keeps its settings (it resumes its checkpoint). None: no untried setting is left. Call
        under the queue lock, so that two workers see each other's proposals."""
        storage = study._storage
        size = space_size(self.cfg.space)
        for attempt in range(MAX_RESAMPLE):
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            tried = {setting_key(t.params) for t in trials if t.params}
            if size is not None and not waiting and len(tried) >= size:
                break  # every setting of a finite space was tried
            seed = sampler_seed(self.cfg.seed, len(trials))
            if attempt == 0 or waiting:
                study.sampler = make_sampler(self.cfg.sampler, len(self.directions), seed, self.cfg.trials)
            else:
                study.sampler = optuna.samplers.RandomSampler(seed=seed)
                untried = untried_setting(self.cfg.space, tried, seed)
                if untried is not None:
                    study.enqueue_trial(untried, skip_if_exists=False)
            trial = study.ask()
            storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())
            params = suggest(trial, self.cfg.space)
            twin = duplicate_of(trial.params, [t for t in trials if t.number not in _retried(trial, trials)],
                                trial.number)
            if twin is None:
                return trial, params
            storage.set_trial_user_attr(trial._trial_id, "params", params)
            storage.set_trial_user_attr(trial._trial_id, "duplicate_of", twin)
            study.tell(trial.number, state=TrialState.FAIL)
            self.log(f"explore trial {trial.number}: the settings of trial {twin} again: not run, proposing others")
        self.space_exhausted = len(active(study.get_trials(deepcopy=False)))
        self.log(f"explore: stopping after {self.space_exhausted} trials: every setting of the space was tried, or "
                 f"{MAX_RESAMPLE} proposals in a row repeated tried ones")
        return None

    def _run_explore_trial(self, study: optuna.Study, trial: optuna.Trial, params: dict, kill: bool = False) -> None:
        started = time.perf_counter()
        study._storage.set_trial_user_attr(trial._trial_id, "params", params)
        self.log(f"explore trial {trial.number}: {short(params)}")

        def prune(stage: str, row: dict) -> None:
            if kill and stage == "student":  # tests: the process dies mid-trial, after a checkpoint
                os.kill(os.getpid(), signal.SIGKILL)
            if stage != "student" or not self._prunable() or row.get("val_accuracy") is None:
                return
            trial.report(row["val_accuracy"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: val accuracy {row['val_accuracy']:.4f}")
        try:
            raw = self.trial_recipe(params, "explore")
            run_dir, report = self.run_trial(raw, prune)
        except optuna.TrialPruned as e:
            study._storage.set_trial_user_attr(trial._trial_id, "pruned", str(e))
            study.tell(trial.number, state=TrialState.PRUNED)
            self.log(f"explore trial {trial.number}: pruned ({e})")
            return
        except Exception as e:  # noqa: BLE001 - a failing combination is a result, not the end of the search
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"{type(e).__name__}: {e}")
            study.tell(trial.number, state=TrialState.FAIL)
            self.log(f"[yellow]explore trial {trial.number} failed:[/] {type(e).__name__}: {e}")
            return
        metrics, note = self._measure(report, raw, run_dir)
        self._finish(study, trial._trial_id, trial.number, run_dir, metrics, started, note)
        self.log(f"explore trial {trial.number}: {short(metrics)}" + (f" ({note})" if note else ""))

    def _time_left_for_another(self, trials: list[FrozenTrial]) -> bool:
        if self.cfg.time_budget_min is None:
            return True
        done = [t.user_attrs for t in trials if "duration_s" in t.user_attrs]
        if len(done) < min(3, self.cfg.trials):  # the first trial carries one-off costs (the shared teacher cache)
            return True
        per_trial = statistics.median(a["duration_s"] for a in done)
        training = statistics.median(min(a["duration_s"], a.get("metrics", {}).get("train_time_s") or 0.0)
                                     for a in done)
        full_run = per_trial + training * (1 / self.cfg.rung_fraction - 1)  # only the training grows with epochs
        runs_later = (self.promote_limit() * self.cfg.full_seeds
                      + self.cfg.confirm_top * self.cfg.confirm_seeds * 2)  # + their baselines
        elapsed = time.perf_counter() - self.started
        return elapsed + per_trial + runs_later * full_run <= 60 * self.cfg.time_budget_min

    def wait_idle(self, study: optuna.Study) -> None:
        """Other workers may still run first-rung trials: promotion needs all of them."""
        while True:
            trials = active(study.get_trials(deepcopy=False))
            if not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                return
            if any(t.state == TrialState.WAITING for t in trials):
                return  # a re-queued trial: explore() takes it
            self.recover()
            time.sleep(POLL_S)

    def work(self) -> None:
        """One worker's share of every phase (several workers run this at once, on one study)."""
        self.ensure_base()
        while True:  # until no re-queued first-rung trial is left (a killed worker's, picked up here)
            self.explore()
            self.wait_idle(self.studies["explore"])
            if not any(t.state == TrialState.WAITING for t in self.studies["explore"].get_trials(deepcopy=False)):
                break
        self.promote()
        self.confirm()

    def write_report(self) -> dict:
        from .report import write_search_report

        return write_search_report(self)

    def run(self) -> dict:
        self.prepare()
        self.work()
        return self.write_report()


def _retried(trial: optuna.Trial, trials: list[FrozenTrial]) -> set[int]:
    """The trials a re-queued trial re-runs (its stale original, and that one's, ...): it shares their settings."""
    by_number = {t.number: t for t in trials}
    out, number = set(), trial.user_attrs.get("retry_of")
    while number is not None and number not in out:
        out.add(number)
        number = by_number[number].user_attrs.get("retry_of") if number in by_number else None
    return out


__all__ = ["Search", "SearchConfig"]
