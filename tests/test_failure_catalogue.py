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


# ============================================================================================== run directory (rundir helper)
# A run directory holds finished work: a re-run that fails keeps it, two processes never share it, and every mistake
# the recipe alone decides is found before the teacher trains. Cases that fake a full disk or a read-only directory
# run in-process (`cli_here`) so they can monkeypatch the writer: root ignores chmod, and no test can fill a disk.
import errno as _errno
import json as _json
import shutil as _shutil
import time as _time


def cli_here(*args: str) -> CliResult:
    """`leankd ARGS` in this process (for monkeypatched faults); an uncaught exception shows as a traceback."""
    import traceback

    from typer.testing import CliRunner

    from leankd.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return CliResult(result.exit_code, text, "")


@pytest.fixture(scope="module")
def finished_tiny(tmp_path_factory):
    """One finished tiny run; cases work on copies of it (`copy_of_finished`)."""
    tmp = tmp_path_factory.mktemp("finished")
    path = write_yaml(tmp / "r.yaml", tiny_recipe(tmp))
    result = cli("run", path, "--quiet")
    assert result.code == 0, result.text[-3000:]
    return tmp


def copy_of_finished(finished: Path, tmp_path: Path, **overrides) -> tuple[Path, Path]:
    """(recipe, run dir): a copy of the finished run under tmp_path, its stages reusable (same fingerprints)."""
    recipe = tiny_recipe(tmp_path, **overrides)
    recipe["data"]["cache_dir"] = str(finished / "cache")  # where data is cached is not part of a fingerprint
    run_dir = tmp_path / "runs" / "tiny"
    _shutil.copytree(finished / "runs" / "tiny", run_dir)
    return write_yaml(tmp_path / "r.yaml", recipe), run_dir


def test_rerun_with_missing_data_keeps_the_finished_run(finished_tiny, tmp_path):
    recipe, run_dir = copy_of_finished(finished_tiny, tmp_path)
    before = snapshot(run_dir)
    assert {"report.json", "report.md", "recipe.yaml", "curves.png"} <= set(before)
    result = cli("run", recipe, "--quiet", "--set", "data.source=/nowhere")
    assert_clean_error(result, "/nowhere", "demo")
    assert_unchanged(before, run_dir, allow_new=False)  # report, plots and recipe.yaml untouched, no lock left


def test_killed_compress_keeps_the_previous_report(finished_tiny, tmp_path, monkeypatch):
    from leankd import pipeline

    _, run_dir = copy_of_finished(finished_tiny, tmp_path)
    assert cli_here("compress", run_dir, "--to", "fp16", "--quiet").code == 0  # an artifact to lose
    before = snapshot(run_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "measure_models", interrupted)  # Ctrl-C while the new artifact is measured
    result = cli_here("compress", run_dir, "--to", "int8-dynamic", "--quiet")
    assert_clean_error(result, "interrupted", code=130)
    assert_unchanged(before, run_dir, allow_new=False)  # report and compressed/fp16 kept, staged int8 discarded


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, teacher={"train": {"epochs": 3}}))
    run_dir = tmp_path / "runs" / "tiny"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    first = subprocess.Popen([sys.executable, "-m", "leankd.cli", "run", str(path), "--quiet"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = _time.monotonic() + 120
        started = lambda: (run_dir / ".leankd.lock").exists() or (run_dir / "teacher").exists()  # noqa: E731
        while not started() and first.poll() is None and _time.monotonic() < deadline:
            _time.sleep(0.1)
        overlapping = first.poll() is None
        second = cli("run", path, "--quiet")
    finally:
        out, err = first.communicate(timeout=600)
    assert overlapping, "the first run ended before the second started: the case proves nothing"
    assert_clean_error(second, "in use by another leankd process", f"pid {first.pid}", f"kill {first.pid}",
                       "--resume")
    assert first.returncode == 0, err[-3000:]
    assert (run_dir / "report.json").exists() and not (run_dir / ".leankd.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(finished_tiny, tmp_path):
    recipe, run_dir = copy_of_finished(finished_tiny, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited (a kill -9 leaves its lock file behind like this)
    (run_dir / ".leankd.lock").write_text(_json.dumps({"pid": pid, "host": "h", "started": "2026-01-01T00:00:00Z"}))
    result = cli("run", recipe, "--quiet")
    assert result.code == 0, result.text[-3000:]
    assert f"taking over the lock of {run_dir} left by pid {pid}" in " ".join(result.text.split())
    assert not (run_dir / ".leankd.lock").exists()


def test_feature_pair_naming_a_missing_module_fails_before_training(tmp_path):
    recipe = tiny_recipe(tmp_path, distill={"features": [{"kind": "hint", "pairs": [["layer1", "layer9"]]}]})
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "distill.features[0].pairs", "teacher", "no module named 'layer9'", "did you mean")
    assert not (tmp_path / "runs").exists()  # nothing trained, not even a run directory left behind


def test_cache_top_k_not_below_the_class_count_fails_before_training(tmp_path):
    recipe = tiny_recipe(tmp_path, teacher={"cache": True, "cache_top_k": 10})  # demo data: 10 classes
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "teacher.cache_top_k = 10", "between 1 and 9", "leave it unset")
    assert not (tmp_path / "runs").exists()


def test_disk_full_while_checkpointing(tmp_path, monkeypatch):
    from leankd.train import checkpoint

    real, calls = checkpoint.save_file, []

    def fills_the_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second epoch's checkpoint: the first is on disk
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise OSError(_errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, teacher={"train": {"epochs": 2}}))
    result = cli_here("run", path, "--quiet")
    teacher = tmp_path / "runs" / "tiny" / "teacher"
    assert_clean_error(result, "no space left", "checkpoint.safetensors", str(teacher), "needs about", "MB",
                       "--resume")
    assert checkpoint.read_state(teacher / "checkpoint.safetensors")["epoch"] == 1  # the atomic write held
    assert not list(teacher.glob(".*.tmp"))


def test_read_only_run_directory(finished_tiny, tmp_path, monkeypatch):
    from leankd import runlock

    recipe, run_dir = copy_of_finished(finished_tiny, tmp_path)
    before = snapshot(run_dir)

    def read_only(path, what):
        raise OSError(_errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runlock, "_open_locked", read_only)  # the first write of a run: its lock file
    result = cli_here("run", recipe, "--quiet")
    assert_clean_error(result, str(run_dir), "read-only file system", "--run-dir")
    assert_unchanged(before, run_dir, allow_new=False)


def test_read_only_parent_of_a_new_run_directory(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "tiny"
    mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if self == run_dir:
            raise PermissionError(_errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied)
    result = cli_here("run", write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path)), "--quiet")
    assert_clean_error(result, "permission denied", str(run_dir), "chmod", "--run-dir")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_parent_for_real(tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = cli("run", write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path)), "--quiet")
    finally:
        parent.chmod(0o755)
    assert_clean_error(result, "permission denied", str(parent / "tiny"))
