"""Progress display for the loop: a rich bar per epoch with loss, accuracy and samples/s, and one summary line
per epoch. `quiet=True` (CI, logs) prints only the summary lines."""
from __future__ import annotations

from typing import Callable, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .loop import ProgressHook


class RichProgress(ProgressHook):
    def __init__(self, stage: str, console: Optional[Console] = None, quiet: bool = False,
                 on_epoch: Optional[Callable[[dict], None]] = None):
        self.stage = stage
        self.on_epoch = on_epoch  # called with each epoch's row (a search prunes a trial from here)
        self.console = console or Console()
        self.quiet = quiet
        self._progress: Optional[Progress] = None
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{self.stage}[/] epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, info="")

    def update(self, step: int, **m: float) -> None:
        if self._progress is not None:
            acc = f"  acc {100 * m['accuracy']:.1f}%" if m.get("accuracy") is not None else ""
            info = f"loss {m['loss']:.3f}{acc}  {m['samples_per_s']:.0f} samples/s"
            self._progress.update(self._task, completed=step, info=info)

    def end_epoch(self, row: dict) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(epoch_line(self.stage, row, self.epochs), highlight=False, soft_wrap=True)
        if self.on_epoch is not None:
            self.on_epoch(row)


def epoch_line(stage: str, row: dict, epochs: int) -> str:
    """The one summary line of a finished epoch (the same with or without a terminal)."""
    val = f"  val acc {100 * row['val_accuracy']:.2f}%" if row.get("val_accuracy") is not None else ""
    if row.get("val_pearson") is not None:  # regression
        val = f"  val pearson {row['val_pearson']:.4f}"
    train = f"  train acc {100 * row['train_accuracy']:.2f}%" if row.get("train_accuracy") is not None else ""
    return (f"{stage:>9} epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}"
            f"{train}{val}  {row['samples_per_s']:.0f} samples/s  {row['epoch_time_s']:.1f}s")
