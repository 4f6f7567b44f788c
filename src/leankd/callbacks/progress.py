"""The run's progress display, a callback: one overall bar across stages and epochs with an ETA (eta.py), and the
per-epoch bar under it, in one rich `Progress` (rich allows one live display at a time). On a terminal the bars are
live during a stage's training and vanish after it; the epoch summary lines stay. Not a terminal (a pipe, CI, a log
file) or `quiet`: plain lines only, the epoch line followed by the run's overall line."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..train.progress import epoch_line
from . import Callback
from .eta import Eta, format_eta


class RunProgress(Callback):
    def __init__(self, console: Optional[Console] = None, quiet: bool = False, clock=time.perf_counter):
        self.console = console or Console()
        self.live = not quiet and self.console.is_terminal
        self.eta = Eta({})
        self.clock = clock
        self._progress: Optional[Progress] = None
        self._overall = self._epoch = None
        self._epoch_start = 0.0
        self.epochs = 0

    # plan ------------------------------------------------------------------------------------------------
    def on_run_start(self, run_dir: Optional[Path], plan: dict[str, int]) -> None:
        self.eta = Eta(plan)

    def on_stage_start(self, stage: str, info: dict) -> None:
        if info.get("reused"):
            self.eta.stage_reused(stage, info.get("epochs"))
            return
        self.eta.stage_start(stage, info["epochs"], info.get("start_epoch", 0))
        if self.live:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                      transient=True)
            self._progress.start()
            self._overall = self._progress.add_task("[bold]run[/] epochs", total=max(self.eta.total, 1),
                                                    completed=self.eta.completed, info=self._eta_text())

    def on_stage_end(self, stage: str, info: dict) -> None:
        if info.get("reused"):
            self.eta.stage_reused(stage)
        self._stop()

    # epochs and steps --------------------------------------------------------------------------------------
    def on_epoch_start(self, stage: str, epoch: int, epochs: int, steps: int) -> None:
        self.epochs, self._steps, self._epoch_start = epochs, max(steps, 1), self.clock()
        if self._progress is not None:
            if self._epoch is not None:
                self._progress.remove_task(self._epoch)
            self._epoch = self._progress.add_task(f"[bold]{stage}[/] epoch {epoch}/{epochs}", total=steps, info="")

    def on_step_end(self, stage: str, step: int, metrics: dict) -> None:
        self.eta.step(metrics["step_in_epoch"] / self._steps, self.clock() - self._epoch_start)
        if self._progress is not None:
            acc = f"  acc {100 * metrics['accuracy']:.1f}%" if metrics.get("accuracy") is not None else ""
            info = f"loss {metrics['loss']:.3f}{acc}  {metrics['samples_per_s']:.0f} samples/s"
            self._progress.update(self._epoch, completed=metrics["step_in_epoch"], info=info)
            self._progress.update(self._overall, total=max(self.eta.total, 1), completed=self.eta.completed,
                                  info=self._eta_text())

    def on_epoch_end(self, stage: str, row: dict) -> None:
        self.eta.epoch_end(stage, self.clock() - self._epoch_start)
        self.console.print(epoch_line(stage, row, self.epochs), highlight=False, soft_wrap=True)
        if self._progress is not None:
            self._progress.update(self._overall, total=max(self.eta.total, 1), completed=self.eta.completed,
                                  info=self._eta_text())
        else:
            self.console.print(f"{'run':>9} {self.overall_text()}", highlight=False, soft_wrap=True)

    def overall_text(self) -> str:
        done, total = self.eta.completed, self.eta.total
        pct = 100 * done / total if total else 100.0
        return f"{done:g}/{total} epochs ({pct:.0f}%)  ETA {format_eta(self.eta.eta())}"

    def _eta_text(self) -> str:
        return f"ETA {format_eta(self.eta.eta())}"

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._overall = self._epoch = None

    def close(self) -> None:
        self._stop()
