"""What the run's callbacks need from a recipe before the first stage: the stages it will train or reuse with
their epochs (the overall progress and its ETA), and the callback list itself (progress, loggers, the user's)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

from ..core import dist
from ..core.taskkind import TASK_KINDS
from . import CallbackList


def stage_plan(recipe, with_seeds: bool) -> dict[str, int]:
    """{stage: epochs} of the stages a run of `recipe` trains or reuses, in order: the teacher (unless loaded), then
    per seed the baseline, the logit-KD control, assistants and the KD student; other seeds' as `seed<k>/<stage>`.
    A task kind's own student stages are not known here: they join when they start."""
    from ..report.notes import LOGIT_KD_ROLE

    r = recipe
    student = r.stage_train("student").epochs
    per_seed: dict[str, int] = {}
    if r.baseline:
        per_seed["baseline"] = student
    if not TASK_KINDS.get(r.data.task).replaces_student:
        if r.distill.features and r.distill.feature_control:
            per_seed[LOGIT_KD_ROLE] = student
        for i, cfg in enumerate(r.distill.assistants, start=1):
            per_seed[f"assistant{i}"] = cfg.train.apply(r.stage_train("student")).epochs
        per_seed["student"] = student
    teacher = {} if r.teacher.checkpoint else {"teacher": r.stage_train("teacher").epochs}
    plan = {**teacher, **per_seed}
    if with_seeds and r.seeds and len(r.seeds) > 1:
        for seed in (s for s in r.seeds if s != r.seed):
            if r.seeds_teacher == "per_seed":
                plan.update({f"seed{seed}/{k}": v for k, v in teacher.items()})
            plan.update({f"seed{seed}/{k}": v for k, v in per_seed.items()})
    return plan


def run_events(loggers: list[str], run_dir: Optional[Path], run_name: str, console: Console, quiet: bool,
               callbacks: Optional[list] = None) -> CallbackList:
    """The progress display, the named loggers (rank 0 only; checked first: an unknown name or a missing package is
    a `LoggerError` before anything trains), then the user's callbacks."""
    from .loggers import build_loggers
    from .progress import RunProgress

    built = build_loggers(loggers, run_dir, run_name)
    return CallbackList([RunProgress(console, quiet=quiet), *(built if dist.is_main() else []), *(callbacks or [])])
