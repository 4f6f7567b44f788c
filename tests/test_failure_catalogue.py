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


# ===== seeds (seeds helper): `seeds:` in a recipe and `leankd run --seeds`
def test_seeds_option_not_integers(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    assert_clean_error(cli("run", path, "--seeds", "0,one"), "--seeds '0,one'", "comma-separated integers",
                       "--seeds 0,1,2")
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_seeds_repeated_in_recipe(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, seeds=[0, 1, 0]))
    assert_clean_error(cli("validate", path), "seeds lists [0] more than once", "list it once")


def test_seeds_without_the_recipe_seed(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, seed=5))
    assert_clean_error(cli("run", path, "--seeds", "0,1"), "seed is 5 but seeds is [0, 1]", "add 5 to seeds")
    assert not (tmp_path / "runs").exists()
# ============================================================================================== search (search helper)
# A killed search resumed without repeating a trial: tests/test_search.py::
# test_killed_search_resumes_without_losing_a_finished_trial_or_repeating_one (kill -9 mid-trial, then --resume).
def _existing_search(tmp_path: Path) -> tuple[Path, Path]:
    """A search directory as a first `leankd search` leaves it (its recipe and study), made without training."""
    from leankd.recipe import dump_recipe, parse_recipe

    recipe = tiny_recipe(tmp_path, search={"space": {"distill.temperature": {"low": 1.0, "high": 4.0}}, "trials": 2})
    path = write_yaml(tmp_path / "search.yaml", recipe)
    search_dir = tmp_path / "s"
    search_dir.mkdir()
    (search_dir / "recipe.yaml").write_text(dump_recipe(parse_recipe(recipe)))
    (search_dir / "study.journal").write_text('{"op_code": 0, "worker_id": "w", "study_name": "tiny:explore"}\n')
    return path, search_dir


def test_search_again_into_an_existing_search_needs_resume_or_force(tmp_path):
    path, search_dir = _existing_search(tmp_path)
    before = snapshot(search_dir)
    result = cli("search", path, "--run-dir", search_dir, "--quiet")
    assert_clean_error(result, f"a search already exists in {search_dir}", "--resume", "--force")
    assert_unchanged(before, search_dir, allow_new=False)


def test_search_resume_with_another_recipe_is_refused(tmp_path):
    path, search_dir = _existing_search(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["search"]["space"]["distill.temperature"]["high"] = 8.0
    write_yaml(path, recipe)
    before = snapshot(search_dir)
    result = cli("search", path, "--run-dir", search_dir, "--resume", "--quiet")
    assert_clean_error(result, "holds a search of another recipe", "use another directory", "--force")
    assert_unchanged(before, search_dir, allow_new=False)
# ============================================================================================== timing (timing helper)
def _report_only_run(tmp_path):
    """A run directory holding only a valid report.json (no recipe, no weights)."""
    import json

    from leankd.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    report = build_report({"name": "r"}, {"teacher": {"role": "teacher", "latency": {"cpu": {"batch_1": {"median_ms": 1.0}}}}})
    (run / "report.json").write_text(json.dumps(report))
    return run


def test_remeasure_without_recipe_names_it(tmp_path):
    run = _report_only_run(tmp_path)
    before = snapshot(run)
    assert_clean_error(cli("report", run, "--remeasure"), "recipe.yaml", "leankd run")
    assert_unchanged(before, run, allow_new=False)


def test_report_threads_needs_remeasure(tmp_path):
    run = _report_only_run(tmp_path)
    before = snapshot(run)
    assert_clean_error(cli("report", run, "--threads", "2"), "--threads", "--remeasure")
    assert_unchanged(before, run, allow_new=False)
