"""The overall progress of a run and its ETA, as plain arithmetic (no display), so it can be tested with given times.

Unit: epochs of the whole run. Stages are known up front with their epochs (`Pipeline.stage_plan`); a reused stage
counts as done, a resumed stage's finished epochs too. The rate is the seconds per epoch measured in this process
(reused and resumed epochs took no time here, so they do not enter it), which assumes every remaining epoch costs
what the trained ones did: a teacher epoch is usually dearer than a student's, so early ETAs lean pessimistic.
"""
from __future__ import annotations

from typing import Optional


class Eta:
    def __init__(self, plan: dict[str, int]):
        self.plan = dict(plan)
        self.done: dict[str, float] = {name: 0.0 for name in plan}  # epochs finished (or skipped as done)
        self.trained_epochs = 0.0  # epochs (fractions included) trained in this process
        self.trained_seconds = 0.0
        self._epoch_fraction = 0.0  # of the epoch in progress
        self._epoch_seconds = 0.0

    @property
    def total(self) -> int:
        return sum(self.plan.values())

    @property
    def completed(self) -> float:
        return sum(self.done.values()) + self._epoch_fraction

    def stage_start(self, stage: str, epochs: int, already_done: int = 0) -> None:
        """A stage starts training (or resumes after `already_done` epochs); one not in the plan joins it."""
        self.plan[stage] = epochs
        self.done[stage] = float(already_done)

    def stage_reused(self, stage: str, epochs: Optional[int] = None) -> None:
        if epochs is not None or stage not in self.plan:
            self.plan[stage] = epochs if epochs is not None else 0
        self.done[stage] = float(self.plan[stage])

    def step(self, fraction: float, seconds: float) -> None:
        """The epoch in progress is `fraction` done after `seconds`."""
        self._epoch_fraction, self._epoch_seconds = max(0.0, min(1.0, fraction)), max(0.0, seconds)

    def epoch_end(self, stage: str, seconds: float) -> None:
        self.done[stage] = self.done.get(stage, 0.0) + 1
        self.trained_epochs += 1
        self.trained_seconds += seconds
        self._epoch_fraction = self._epoch_seconds = 0.0

    def seconds_per_epoch(self) -> Optional[float]:
        epochs = self.trained_epochs + self._epoch_fraction
        if epochs <= 0:
            return None
        return (self.trained_seconds + self._epoch_seconds) / epochs

    def eta(self) -> Optional[float]:
        """Seconds left, or None before anything has been timed."""
        rate = self.seconds_per_epoch()
        if rate is None:
            return None
        return max(0.0, self.total - self.completed) * rate


def format_eta(seconds: Optional[float]) -> str:
    """`1:02:03`, `4:05`; `-:--` when unknown."""
    if seconds is None:
        return "-:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
