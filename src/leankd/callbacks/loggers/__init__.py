"""Loggers: callbacks that send each stage's numbers to a tracking tool, selected by name (`logging:` in a recipe,
`report_to=` in the Python API, as in Hugging Face's Trainer). One file per logger in this package registers it in
`LOGGERS`; a new logger is that file and its test.

`<stage>/metrics.jsonl` is written by the training loop whatever is selected (the run's own record; existing run
directories and tools read it), so every logger here is an extra copy. Logging never changes results: the names are
in no stage fingerprint. A logger whose package is missing is an error before any training (`check_loggers`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from ...core.registry import Registry
from ...errors import LeanKDError
from .. import Callback

LOGGERS: Registry[type] = Registry("logger", discover="leankd.callbacks.loggers")


class LoggerError(LeanKDError):
    """An unknown logger or one whose package is not installed."""


class Logger(Callback):
    """Base of the registered loggers. `requires`: the import name of its package (None: nothing to install);
    `extra`: the pip extra that installs it. Built with the run's name and directory (where its files go)."""

    requires: Optional[str] = None
    extra: Optional[str] = None
    every_n_steps = 50

    def __init__(self, run_dir: Optional[Path], run_name: str):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_name = run_name

    def logs_dir(self, *parts: str) -> Path:
        if self.run_dir is None:
            raise LoggerError(f"the {self.name} logger writes under the run directory: pass run_dir=")
        return self.run_dir.joinpath("logs", *parts)

    @property
    def name(self) -> str:
        return next((n for n, cls in LOGGERS.items() if cls is type(self)), type(self).__name__)


def scalars(row: dict) -> dict[str, float]:
    """The numbers of an epoch row (or step metrics) a tracker plots: numeric, not None, not the epoch itself."""
    return {k: float(v) for k, v in row.items()
            if k not in ("epoch", "step_in_epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_loggers(names: list[str], run_dir: Optional[Path] = None) -> None:
    """Each name registered and its package importable, before any training: else a `LoggerError` naming the extra."""
    for name in names:
        if name not in LOGGERS:
            raise LoggerError(LOGGERS.unknown_message(name) + " (logging: / report_to=)")
        cls = LOGGERS.get(name)
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            raise LoggerError(f"logger {name!r} needs the {cls.requires} package, which is not installed: "
                              f"pip install 'leankd[{cls.extra}]' (or {cls.requires}), or remove {name!r} from "
                              "logging: / report_to=")
        if run_dir is None and getattr(cls, "needs_run_dir", True):
            raise LoggerError(f"logger {name!r} writes under the run directory: pass run_dir= (or remove it from "
                              "report_to=)")


def build_loggers(names: list[str], run_dir: Optional[Path], run_name: str) -> list[Logger]:
    check_loggers(names, run_dir)
    return [LOGGERS.get(name)(run_dir, run_name) for name in dict.fromkeys(names)]
