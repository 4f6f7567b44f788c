"""The failure catalogue: every bad input or fault a user can cause ends in a clear error (exit code 2, or 130 for
Ctrl-C) that names the thing and the fix, before any training it would waste, and nothing good is lost.

Each case is one small test built on three helpers:
- `cli(args)` runs the `leankd` command in a fresh process (the exit code and stderr a user sees, tracebacks included);
- `snapshot(dir)` / `assert_unchanged(before, dir)` prove that no file that existed was deleted or rewritten;
- `assert_clean_error(result, *needles)` checks exit code 2, no traceback, and that the message names the thing.

Sections are grouped by area (recipe, data, checkpoints, compression, search, concurrency, signals, disk,
permissions); add a case to the section it belongs to.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> CliResult:
    """Run `leankd ARGS` as a user would: its own process, so exit codes, stderr and tracebacks are real."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "leankd.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, str], root: Path, allow_new: bool = True) -> None:
    """No file of `before` was deleted or changed (new files, e.g. a log, are allowed unless `allow_new` is off)."""
    after = snapshot(root)
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not lost, f"deleted: {lost}"
    assert not changed, f"overwritten: {changed}"
    if not allow_new:
        assert set(after) == set(before), f"new files: {sorted(set(after) - set(before))}"


def assert_clean_error(result: CliResult, *needles: str, code: int = 2) -> None:
    """Exit code `code`, no Python traceback, and every needle (case-insensitive) in what the user saw."""
    assert result.code == code, f"exit {result.code}, expected {code}:\n{result.text[-3000:]}"
    assert "Traceback" not in result.text, result.text[-3000:]
    low = " ".join(result.text.lower().split())  # rich may wrap long lines
    for needle in needles:
        assert " ".join(needle.lower().split()) in low, f"{needle!r} not in:\n{result.text[-3000:]}"


def write_yaml(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def tiny_recipe(tmp_path: Path, **overrides) -> dict:
    """A demo-data recipe small enough to finish in seconds when a case needs a finished run."""
    recipe = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "demo", "limit_train": 64, "limit_test": 32, "val_fraction": 0.25,
                 "cache_dir": str(tmp_path / "cache")},
        "teacher": {"model": "resnet8", "train": {"epochs": 1}},
        "student": {"model": "resnet8"},
        "train": {"epochs": 1, "batch_size": 16},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


# ============================================================================================== recipe
def test_recipe_missing_file(tmp_path):
    assert_clean_error(cli("run", tmp_path / "nope.yaml"), "nope.yaml")


def test_recipe_unknown_key(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, bogus=1))
    assert_clean_error(cli("validate", path), "bogus")


def test_tiny_recipe_runs(tmp_path):
    """The harness itself: the tiny recipe finishes, so cases that need a finished run can rely on it."""
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    result = cli("run", path, "--quiet")
    assert result.code == 0, result.text[-3000:]
    assert (tmp_path / "runs" / "tiny" / "report.json").exists()


# ================================================================================ data (sanity helper: speaker splits)
def _fsdd_recipe(tmp_path: Path, **audio) -> Path:
    """A keyword-spotting recipe on a tiny FSDD-style folder (<digit>/<digit>_<speaker>_<n>.wav)."""
    import numpy as np
    import soundfile as sf

    for d in ("0", "1"):
        (tmp_path / "clips" / d).mkdir(parents=True, exist_ok=True)
        for s in ("ann", "bob", "cid"):
            sf.write(tmp_path / "clips" / d / f"{d}_{s}_0.wav", np.zeros(2000, dtype="float32"), 8000)
    recipe = tiny_recipe(tmp_path, data={"task": "keyword_spotting", "source": str(tmp_path / "clips"),
                                         "limit_test": None, "audio": {"sample_rate": 8000, "clip_seconds": 0.25,
                                                                       "n_fft": 256, "win_length": 256, **audio}},
                         teacher={"model": "dscnn_s"}, student={"model": "dscnn_s"})
    return write_yaml(tmp_path / "r.yaml", recipe)


def test_speaker_pattern_not_a_regex(tmp_path):
    assert_clean_error(cli("validate", _fsdd_recipe(tmp_path, speaker_pattern="(?P<speaker>[a-z")),
                       "data.audio.speaker_pattern", "not a valid regular expression")


def test_speaker_pattern_without_speaker_group(tmp_path):
    assert_clean_error(cli("validate", _fsdd_recipe(tmp_path, speaker_pattern=r"_(\w+)_\d+")),
                       "speaker_pattern", "no named group 'speaker'", "(?P<speaker>...)")


def test_speaker_pattern_matching_no_clip_fails_before_training(tmp_path):
    result = cli("run", _fsdd_recipe(tmp_path, speaker_pattern=r"(?P<speaker>spk\d+)"), "--quiet")
    assert_clean_error(result, "data.audio.speaker_pattern", "matches none of the 6 clip paths", "0/0_ann_0.wav")
    assert not list((tmp_path / "runs").rglob("*.safetensors"))  # nothing trained
