"""Callbacks: what a run tells the outside while it trains (the progress display, the loggers, a user's objects).

Why a second interface beside the loop's `ProgressHook`: the loop knows epochs and steps only, while a user (or
TensorBoard, MLflow) wants the run's shape too: which stages train, which are reused, which files were written.
The loop keeps calling its `ProgressHook`; `StageEvents` (events.py) turns those calls into callback events for one
stage, and the stage runner (stages.py) / pipeline add stage start/end and artifact events around them.

Every method is optional (a no-op here). Under torchrun only rank 0 dispatches: one set of logs per run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from ..core import dist


class Callback:
    """Subclass and override what you need. `every_n_steps`: how often `on_step_end` is called (the loop reports a
    step every step on the CPU, every 20 on a GPU; this thins them further)."""

    every_n_steps: int = 1

    def on_run_start(self, run_dir: Optional[Path], plan: dict[str, int]) -> None:
        """`plan`: {stage: epochs} of the stages the run expects to train or reuse (a task kind's own stages may
        join later)."""

    def on_stage_start(self, stage: str, info: dict) -> None:
        """`info`: epochs, start_epoch (epochs already done by a resumed stage), reused, params (settings)."""

    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        """Epoch `epoch` of `epochs` (1-based) starts, with `steps` steps."""

    def on_step_end(self, stage: str, step: int, metrics: dict) -> None:
        """`step`: the stage's global step (epochs before count); `metrics`: running loss/accuracy, samples/s."""

    def on_epoch_end(self, stage: str, row: dict) -> None:
        """`row`: the epoch's row, exactly as written to `<stage>/metrics.jsonl`."""

    def on_stage_end(self, stage: str, info: dict) -> None:
        """`info`: reused, origin, training (the report's training block; None when loaded)."""

    def on_artifact(self, path: Path, kind: str) -> None:
        """A file the run wrote: kind is "weights", "report", ..."""

    def on_run_end(self, report: Optional[dict]) -> None:
        """The finished report (None when there is none, e.g. `distill()` without a report written)."""

    def close(self) -> None:
        """Always called at the end of a run, finished or not: flush and release files."""


class CallbackList(Callback):
    """Dispatches every event to its callbacks in order, on rank 0 only. `close` closes each even if one fails."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback) and not any(hasattr(cb, m) for m in _EVENTS):
                from ..errors import LeanKDError

                raise LeanKDError(f"callbacks: {cb!r} is not a leankd.callbacks.Callback (subclass it and override "
                                  "on_epoch_end, on_stage_start, ...)")
        self._steps: dict[tuple[int, str], int] = {}  # (callback, stage) -> the last step it was told

    def add(self, cb: Callback) -> None:
        self.callbacks.append(cb)

    def _call(self, event: str, *args) -> None:
        if not dist.is_main():
            return
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if method is not None:
                method(*args)

    def on_run_start(self, run_dir, plan) -> None:
        self._call("on_run_start", run_dir, plan)

    def on_stage_start(self, stage, info) -> None:
        self._call("on_stage_start", stage, info)

    def on_epoch_start(self, stage, epoch, epochs, steps) -> None:
        self._call("on_epoch_start", stage, epoch, epochs, steps)

    def on_step_end(self, stage, step, metrics) -> None:
        """To each callback at most once per its `every_n_steps` (the loop may report every step or every 20th)."""
        if not dist.is_main():
            return
        for i, cb in enumerate(self.callbacks):
            every = max(1, int(getattr(cb, "every_n_steps", 1) or 1))
            last = self._steps.get((i, stage))
            if hasattr(cb, "on_step_end") and (last is None or step - last >= every or step < last):
                self._steps[(i, stage)] = step
                cb.on_step_end(stage, step, metrics)

    def on_epoch_end(self, stage, row) -> None:
        self._call("on_epoch_end", stage, row)

    def on_stage_end(self, stage, info) -> None:
        self._call("on_stage_end", stage, info)

    def on_artifact(self, path, kind) -> None:
        self._call("on_artifact", Path(path), kind)

    def on_run_end(self, report) -> None:
        self._call("on_run_end", report)

    def close(self) -> None:
        errors = []
        for cb in self.callbacks:
            try:
                if hasattr(cb, "close"):
                    cb.close()
            except Exception as e:  # noqa: BLE001 - every logger gets closed; the first failure is raised after
                errors.append(e)
        if errors:
            raise errors[0]


_EVENTS = ("on_run_start", "on_stage_start", "on_step_end", "on_epoch_end", "on_stage_end", "on_artifact",
           "on_run_end")
