"""Optuna plumbing: storage, samplers, pruners, and the small job-queue helpers the search's later rungs use.

Storage: a journal file in the search directory by default (Optuna's FAQ advises against SQLite for parallel
workers; the journal is append-only and safe for several processes on one machine), or any RDB URL
(`postgresql://...`) for workers on several machines.

Three studies share the storage: `<name>:explore` (the sampler's trials, first rung), `<name>:full` (promoted
candidates at the full budget) and `<name>:confirm` (the best candidates again with other seeds, beside a baseline).
The last two are queues: their trials are enqueued with the job in user attributes and claimed by whichever
worker flips them from WAITING to RUNNING first (the storage makes that flip atomic, the same way Optuna's own
`ask` pops enqueued trials).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from ..errors import LeanKDError
from .space import setting_key

JOURNAL = "study.journal"
RUNGS = ("explore", "full", "confirm")


def open_storage(search_dir: Path, url: Optional[str]) -> optuna.storages.BaseStorage:
    if url is None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(search_dir / JOURNAL)))
    if url.startswith("sqlite"):
        raise LeanKDError("--storage sqlite:...: Optuna advises against SQLite for parallel workers; leave --storage "
                          "out (a journal file in the search directory) or use postgresql://user@host/db")
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # noqa: BLE001 - driver missing, server down, bad URL: all the user's to fix
            racing = "IntegrityError" in type(e).__name__ or "already exists" in str(e)  # e.g. DuplicateObject on
            if racing and attempt < 3:  # Optuna's enum types: two workers creating Optuna's tables at once
                time.sleep(1.0 + attempt)
                continue
            raise LeanKDError(f"--storage {url}: cannot open the study storage ({type(e).__name__}: {e}); is the "
                              "server running and its driver installed (pip install 'leankd[postgres]' for "
                              "postgresql)?") from None
    raise AssertionError("unreachable")


def make_sampler(kind: str, n_objectives: int, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """auto = TPE. Optuna 5's multi-objective default is TPE too (4.x used NSGA-II), but leankd names it: at tens
    of trials NSGA-II's first generation (population 50 by default) would be plain random search, while
    (MO)TPE starts modelling good regions after a few startup trials. Constraints reach the samplers through
    `Trial.set_constraint` (Optuna 5 deprecated `constraints_func`)."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(3, min(10, trials // 3)))


def sampler_seed(seed: int, trials_so_far: int) -> int:
    """The seed of the sampler that proposes the study's next trial: a function of the search's seed and of how
    many trials the study already holds. A sampler's random state lives only in its process, so a resumed search
    (or a second worker) with a fresh sampler seeded `seed` would replay the first run's proposals - duplicates
    of trials already in the study. Seeding each proposal from (seed, trials so far) makes the proposals depend
    on the study's history alone, not on which process (first run, resumed run, second worker) proposes them;
    `duplicate_of` still guards against a proposal that repeats tried settings."""
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def _started(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def worker_id() -> str:
    """host:pid:start time - a restarted container reusing the pid is another worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid()):.0f}"


def worker_is_dead(worker: Optional[str]) -> bool:
    """Whether a trial's worker was a process on this machine that no longer runs (others: unknown -> False)."""
    parts = (worker or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid() and worker == worker_id():
        return False
    started = _started(pid)
    if started is None or f"{started:.0f}" != parts[2]:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


POLL_S = 2.0  # seconds between looks at a queue whose jobs other workers are still running


def claim_waiting(study: optuna.Study) -> Optional[FrozenTrial]:
    """Take one enqueued (WAITING) trial for this worker, or None when none is left."""
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                storage.set_trial_user_attr(trial._trial_id, "worker", worker_id())
                return storage.get_trial(trial._trial_id)
        except RuntimeError:  # another worker flipped it first
            continue
    return None


MAX_RETRIES = 2  # a job that killed its worker this often is given up (e.g. a setting that runs out of memory)
UNCLAIMED_S = 600  # a RUNNING trial that never recorded its worker (killed right after ask) is stale after this


def _retries(study: optuna.Study, trial: FrozenTrial) -> int:
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    n, current = 0, trial
    while current.user_attrs.get("retry_of") is not None and current.user_attrs["retry_of"] in by_number:
        n, current = n + 1, by_number[current.user_attrs["retry_of"]]
    return n


def recover_stale(study: optuna.Study, log) -> int:
    """RUNNING trials whose worker process died (a killed search): their job is enqueued again - same parameters,
    so the same trial directory, whose checkpoint lets the rerun resume mid-training - then they are failed.
    Call under the search's queue lock (two workers must not recover one trial twice)."""
    from datetime import datetime, timezone

    n = 0
    now = datetime.now(timezone.utc)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        unclaimed = worker is None and trial.datetime_start is not None and \
            (now - trial.datetime_start.astimezone(timezone.utc)).total_seconds() > UNCLAIMED_S
        if not (worker_is_dead(worker) or unclaimed):
            continue
        current = study._storage.get_trial(trial._trial_id)  # re-read: another process may have finished it
        if current.state != TrialState.RUNNING:
            continue
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "stale")}
        retries = _retries(study, trial)
        if retries < MAX_RETRIES:
            study.enqueue_trial(trial.params or {}, user_attrs={**attrs, "retry_of": trial.number},
                                skip_if_exists=False)
            log(f"{study.study_name}: trial {trial.number} was cut off by a killed worker: queued again")
            study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
        else:
            log(f"{study.study_name}: trial {trial.number} killed its worker {retries + 1} times: given up")
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"killed its worker {retries + 1} times "
                                               "(out of memory?): given up")
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        n += 1
    return n


MAX_RESAMPLE = 5  # proposals in a row that repeat tried settings before the first rung gives up


def duplicate_of(params: dict, trials: list[FrozenTrial], number: int) -> Optional[int]:
    """The number of an earlier trial (complete, running, pruned, failed or cut off by a kill) whose Optuna
    parameters equal `params`, or None. A re-queued trial's parameters are its stale original's, already in
    the list."""
    key = setting_key(params)
    for t in trials:
        if t.number != number and t.params and setting_key(t.params) == key:
            return t.number
    return None


def active(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count toward the budget: all but the stale ones a killed worker left (their job is re-queued)
    and the proposals that repeated tried settings (never run: the sampler was asked again)."""
    return [t for t in trials if not t.user_attrs.get("stale") and t.user_attrs.get("duplicate_of") is None]
