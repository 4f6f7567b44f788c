"""`StageEvents`: the loop's `ProgressHook` for one stage, turned into callback events. The loop is unchanged: it
calls `start_epoch`/`update`/`end_epoch` as before, and this adapter adds the stage name and a global step."""
from __future__ import annotations

from typing import Callable, Optional

from ..train.loop import ProgressHook
from . import CallbackList


class StageEvents(ProgressHook):
    def __init__(self, stage: str, callbacks: CallbackList, on_epoch: Optional[Callable[[dict], None]] = None):
        self.stage, self.callbacks, self.on_epoch = stage, callbacks, on_epoch
        self.epoch, self.steps = 1, 0

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self.callbacks.on_epoch_start(self.stage, epoch, epochs, steps)

    def update(self, step: int, **metrics: float) -> None:
        self.callbacks.on_step_end(self.stage, (self.epoch - 1) * self.steps + step, {"epoch": self.epoch,
                                                                                    "step_in_epoch": step, **metrics})

    def end_epoch(self, row: dict) -> None:
        self.callbacks.on_epoch_end(self.stage, row)
        if self.on_epoch is not None:  # a search's pruner: may raise to stop the trial (after the checkpoint)
            self.on_epoch(row)
