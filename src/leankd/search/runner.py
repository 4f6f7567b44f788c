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

import fcntl
import hashlib
import json
import math
import os
import signal
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from ..errors import LeanKDError, RecipeError
from ..recipe import Recipe, dump_recipe, parse_recipe
from ..report.schema import load_report
from .config import SearchConfig
from .metrics import (CPU_LATENCY, candidate_metrics, last_val_accuracy, latency_fallback_note, reference_ms_per_mac,
                      params_key, resolve, selection_value)
from .pareto import pareto_front, select_for_promotion
from .space import apply_params, check_space, setting_key, space_size, suggest, untried_setting
from .study import (MAX_RESAMPLE, RUNGS, active, claim_waiting, duplicate_of, make_sampler, open_storage,
                    recover_stale, sampler_seed, worker_id)

POLL_S = 2.0


def trial_key(raw: dict) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Search:
    def __init__(self, recipe: Recipe, search_dir: Path, *, resume: bool = False, force: bool = False,
                 storage: Optional[str] = None, quiet: bool = False, console: Optional[Console] = None,
                 kill_after_trials: Optional[int] = None):
        if recipe.search is None:
            raise RecipeError("this recipe has no search: section; add one (search.space, search.objectives, "
                              "search.trials) - see docs/search.md")
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
            if not _same_recipe(saved, self.recipe):
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
        self.recover()

    def recover(self) -> None:
        with self._lock("queue"):
            for study in self.studies.values():
                recover_stale(study, self.log)

    def _prunable(self) -> bool:
        """Single objective on accuracy: per-epoch validation accuracy is a fair early signal of it."""
        return len(self.cfg.objectives) == 1 and self.cfg.objectives[0].metric == "accuracy"

    @contextmanager
    def _lock(self, name: str, where: Optional[Path] = None):
        """One process at a time on this machine (the base run, the queues, one trial directory)."""
        with open((where or self.dir) / f".{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --------------------------------------------------------------------------------------------- a run
    def trial_recipe(self, params: dict, rung: str, seed: Optional[int] = None, baseline: bool = False) -> dict:
        """The recipe of one trial run: the starting recipe with `params`, the shared teacher, its rung's epochs."""
        raw = apply_params(self.base_raw, params)
        teacher = raw["teacher"]
        teacher["checkpoint"] = str((self.dir / "base" / "teacher" / "model.safetensors").resolve())
        teacher.pop("limit_train", None)
        if teacher.get("cache"):
            teacher["cache_dir"] = str((self.dir / "teacher_cache").resolve())
        raw["baseline"] = baseline
        # every trial and seed on the base run's examples: seeds vary training, not which images validate (the
        # selection's yardstick) or train (a loaded teacher's normalization and memorized examples come with them)
        raw.setdefault("data", {})["split_seed"] = self.recipe.split_seed
        if seed is not None:
            raw["seed"] = seed
        full = parse_recipe(raw, origin="a search trial").stage_train("student").epochs
        epochs = full if rung != "explore" else max(1, round(full * self.cfg.rung_fraction))
        raw.setdefault("student", {}).setdefault("train", {})["epochs"] = epochs
        raw["name"] = f"{self.recipe.name}-{rung}"
        return raw

    def run_dir_of(self, raw: dict) -> Path:
        return self.dir / "trials" / trial_key({k: v for k, v in raw.items() if k != "name"})

    def run_trial(self, raw: dict, hook: Optional[Callable[[str, dict], None]] = None) -> tuple[Path, dict]:
        from ..pipeline import Pipeline

        run_dir = self.run_dir_of(raw)
        recipe = parse_recipe(raw, origin=str(run_dir / "recipe.yaml"))
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(f"run-{run_dir.name}", run_dir.parent):  # the same settings twice: the second reuses
            pipe = Pipeline(recipe, run_dir, resume=True, quiet=True, console=Console(quiet=True))  # a line a trial
            pipe.epoch_hook = hook
            report = pipe.run()
        return run_dir, report

    def targets_of(self, params: dict) -> list[str]:
        """The compression targets a trial with `params` builds (its candidate is the first one's artifact)."""
        return list(apply_params(self.base_raw, params).get("compress", {}).get("targets", []))

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
                           "duration_s": round(time.perf_counter() - started, 2)}.items():
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

    # ------------------------------------------------------------------------------------------- phases
    def ensure_base(self) -> dict:
        """The starting recipe's run (teacher, baseline, starting KD student): trained once, reused after."""
        from ..pipeline import Pipeline

        base_dir = self.dir / "base"
        with self._lock("base"):
            report_path = base_dir / "report.json"
            recipe_path = base_dir / "recipe.yaml"
            if report_path.exists() and _same_recipe(recipe_path, parse_recipe(self.base_raw)):
                return load_report(report_path)
            self.log(f"[bold]search[/] base: the starting recipe (teacher, baseline, KD student) -> {base_dir}")
            return Pipeline(parse_recipe(self.base_raw), base_dir, resume=True, quiet=True,
                            console=Console(quiet=True) if self.quiet else self.console).run()

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
        self.log(f"explore trial {trial.number}: {_short(params)}")

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
        self.log(f"explore trial {trial.number}: {_short(metrics)}" + (f" ({note})" if note else ""))

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
            self.log(f"{study.study_name.split(':')[-1]} job {trial.number}: {_short(trial.user_attrs['params'])}"
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


def _same_recipe(path: Path, recipe: Recipe) -> bool:
    """Whether the recipe saved at `path` means `recipe`: compared as parsed by this version, so settings that a
    newer leankd added (at their defaults) do not make an older search "another recipe"."""
    import yaml

    if not path.exists():
        return False
    try:
        return parse_recipe(yaml.safe_load(path.read_text()), origin=str(path)).model_dump() == recipe.model_dump()
    except (LeanKDError, yaml.YAMLError):
        return False


def _retried(trial: optuna.Trial, trials: list[FrozenTrial]) -> set[int]:
    """The trials a re-queued trial re-runs (its stale original, and that one's, ...): it shares their settings."""
    by_number = {t.number: t for t in trials}
    out, number = set(), trial.user_attrs.get("retry_of")
    while number is not None and number not in out:
        out.add(number)
        number = by_number[number].user_attrs.get("retry_of") if number in by_number else None
    return out


def _short(d: dict) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in d.items() if v is not None)


__all__ = ["Search", "SearchConfig"]
