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
from typing import Optional, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import LeanKDError

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
            if "IntegrityError" in type(e).__name__ and attempt < 3:  # two workers creating Optuna's tables at once
                time.sleep(1.0 + attempt)
                continue
            raise LeanKDError(f"--storage {url}: cannot open the study storage ({type(e).__name__}: {e}); is the "
                              "server running and its driver installed (pip install 'leankd[postgres]' for "
                              "postgresql)?") from None
    raise AssertionError("unreachable")


def make_sampler(kind: str, n_objectives: int, seed: int, trials: int, constraints_func=None
                 ) -> optuna.samplers.BaseSampler:
    """auto = TPE. Optuna 5's multi-objective default is TPE too (4.x used NSGA-II), but leankd names it: at tens
    of trials NSGA-II's first generation (population 50 by default) would be plain random search, while
    (MO)TPE starts modelling good regions after a few startup trials."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)),
                                             constraints_func=constraints_func)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(3, min(10, trials // 3)),
                                      constraints_func=constraints_func)


def constraints_from_attrs(trial: FrozenTrial) -> Sequence[float]:
    """Optuna's constraints_func: the violations stored on the trial before it was told (<= 0: feasible)."""
    return trial.user_attrs.get("violations", [0.0])


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_is_dead(worker: Optional[str]) -> bool:
    """Whether a trial's worker was a process on this machine that no longer runs (others: unknown -> False)."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


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


def recover_stale(study: optuna.Study, log) -> int:
    """RUNNING trials whose worker process died (a killed search): failed, and their job enqueued again - same
    parameters, so the same trial directory, whose checkpoint lets the rerun resume mid-training."""
    n = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_is_dead(trial.user_attrs.get("worker")):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
        study.tell(trial.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "stale")}
        study.enqueue_trial(trial.params or {}, user_attrs={**attrs, "retry_of": trial.number},
                            skip_if_exists=False)
        log(f"{study.study_name}: trial {trial.number} was cut off by a killed worker: queued again")
        n += 1
    return n


def active(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that count toward the budget: all but the stale ones a killed worker left (their job is re-queued)."""
    return [t for t in trials if not t.user_attrs.get("stale")]
