"""How a setting of the search becomes an ordinary leankd run: the trial's recipe (the starting recipe with the
trial's parameters, the shared teacher, its rung's epochs), its run directory (named by a hash of that recipe, so
the same settings reuse one run), running it under that directory's lock, and the base run every trial starts from.
A mixin of `Search` (runner.py), kept apart from the phases that decide which runs to make.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console

from ..errors import LeanKDError
from ..recipe import Recipe, parse_recipe
from ..report.schema import load_report
from .config import SearchConfig
from .space import apply_params


# train settings added after searches existed: left out of the key at their defaults, so an upgrade finds every
# finished trial where it was (the keys added before these were already part of every existing key)
TRAIN_KEYS_ADDED_LATER = {"sync_bn": False, "accumulate": 1, "fsdp": False}


def trial_key(raw: dict) -> str:
    """A trial recipe's run directory name: the same settings, the same directory (and its checkpoints)."""
    train = raw.get("train")
    if isinstance(train, dict):
        raw = {**raw, "train": {k: v for k, v in train.items()
                                if not (k in TRAIN_KEYS_ADDED_LATER and v == TRAIN_KEYS_ADDED_LATER[k])}}
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


class TrialRuns:
    """Runs of one search: uses the `Search` attributes below and its `log`."""

    recipe: Recipe
    cfg: SearchConfig
    dir: Path
    base_raw: dict
    quiet: bool
    console: Console

    @contextmanager
    def _lock(self, name: str, where: Optional[Path] = None):
        """One process at a time on this machine (the base run, the queues, one trial directory)."""
        with open((where or self.dir) / f".{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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

    def ensure_base(self) -> dict:
        """The starting recipe's run (teacher, baseline, starting KD student): trained once, reused after."""
        from ..pipeline import Pipeline

        base_dir = self.dir / "base"
        with self._lock("base"):
            report_path = base_dir / "report.json"
            recipe_path = base_dir / "recipe.yaml"
            if report_path.exists() and same_recipe(recipe_path, parse_recipe(self.base_raw)):
                return load_report(report_path)
            self.log(f"[bold]search[/] base: the starting recipe (teacher, baseline, KD student) -> {base_dir}")
            return Pipeline(parse_recipe(self.base_raw), base_dir, resume=True, quiet=True,
                            console=Console(quiet=True) if self.quiet else self.console).run()


def same_recipe(path: Path, recipe: Recipe) -> bool:
    """Whether the recipe saved at `path` means `recipe`: compared as parsed by this version, so settings that a
    newer leankd added (at their defaults) do not make an older search "another recipe"."""
    import yaml

    if not path.exists():
        return False
    try:
        return parse_recipe(yaml.safe_load(path.read_text()), origin=str(path)).model_dump() == recipe.model_dump()
    except (LeanKDError, yaml.YAMLError):
        return False


def short(d: dict) -> str:
    """`d` on one log line: `key=value, ...`, floats to 4 significant digits, None values left out."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in d.items() if v is not None)
