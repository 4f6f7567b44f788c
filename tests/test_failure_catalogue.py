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


# ============================================================================ data and recipe inputs (inputs helper)
def _text_recipe(tmp_path: Path, source: Path, **text) -> dict:
    """Word-level text models: the data is read (and fails) before any tokenizer or teacher is needed."""
    return {"name": "txt", "output_dir": str(tmp_path / "runs"),
            "data": {"task": "text_classification", "source": str(source),
                     "text": {"tokenizer": str(tmp_path / "no-tokenizer"), **text}},
            "teacher": {"model": "text_cnn", "train": {"epochs": 1}}, "student": {"model": "text_bilstm"},
            "train": {"epochs": 1, "batch_size": 8}}


def _seq_recipe(tmp_path: Path, source: Path, **seq) -> dict:
    return {"name": "seq", "output_dir": str(tmp_path / "runs"),
            "data": {"task": "seq2seq", "source": str(source), "seq": seq},
            "teacher": {"model": "seq2seq_rnn", "kwargs": {"hidden": 8}, "train": {"epochs": 1}},
            "student": {"model": "seq2seq_rnn", "kwargs": {"hidden": 8}}, "train": {"epochs": 1, "batch_size": 8}}


def _assert_nothing_trained(run_dir: Path) -> None:
    trained = [p for p in run_dir.rglob("*") if p.suffix == ".safetensors" or p.name == "metrics.jsonl"]
    assert not trained, f"trained before the data error: {trained}"


def test_data_single_class_folder_fails_before_training(tmp_path):
    import torch
    from torchvision.io import write_png

    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    for i in range(12):
        write_png(torch.full((3, 8, 8), 10 * i, dtype=torch.uint8), str(folder / f"{i}.png"))
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, data={"source": str(tmp_path / "imgs"),
                                                                       "limit_test": None}))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, str(tmp_path / "imgs"), "only one class folder", "cat/", "needs at least two",
                       "<root>/<class>/<image>")
    _assert_nothing_trained(tmp_path / "runs")


def test_data_text_single_class(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_text("label\tsentence\n1\ta\n1\tb\n1\tc\n")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _text_recipe(tmp_path, tmp_path / "d")), "--quiet")
    assert_clean_error(result, "train.tsv", "holds one class", "needs two", "text_regression")
    _assert_nothing_trained(tmp_path / "runs")


def test_data_text_not_utf8_names_file_row_and_setting(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_bytes(b"label\tsentence\n1\tfine\n0\tcaf\xe9 cr\xe8me\n")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _text_recipe(tmp_path, tmp_path / "d")), "--quiet")
    assert_clean_error(result, "train.tsv, line 3", "not valid utf-8", "data.text.encoding", "latin-1")


def test_data_text_unknown_encoding(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_text("label\tsentence\n1\tfine\n0\tbad\n")
    recipe = _text_recipe(tmp_path, tmp_path / "d", encoding="latin-9000")
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "data.text.encoding", "'latin-9000' is not a known text encoding", "utf-8")


def test_data_csv_nel_character_is_not_a_row_break(tmp_path):
    """A valid CSV whose text holds U+0085 is one row per line: the run gets past reading to the next check
    (here: the tokenizer folder that does not exist), never 'N fields but the header has 2'."""
    (tmp_path / "d").mkdir()
    rows = ["label,text"] + [f"{i % 2},review {i} ends\x85 like this" for i in range(8)]
    (tmp_path / "d" / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _text_recipe(tmp_path, tmp_path / "d")), "--quiet")
    assert "fields but the header" not in result.text
    assert_clean_error(result, "no-tokenizer", "no such folder")


def test_recipe_not_utf8(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(yaml.safe_dump(tiny_recipe(tmp_path)).encode() + b"# caf\xe9\n")
    result = cli("validate", path)
    lines = path.read_bytes().count(b"\n")
    assert_clean_error(result, "r.yaml", f"line {lines}", "not UTF-8", "re-save it as UTF-8")


def test_recipe_path_is_a_folder(tmp_path):
    write_yaml(tmp_path / "mine.yaml", tiny_recipe(tmp_path))
    result = cli("run", tmp_path)
    assert_clean_error(result, str(tmp_path), "is a folder, not a recipe file", ".yaml", "mine.yaml")


def test_recipe_float_where_text_is_meant(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    result = cli("validate", path, "--set", "name=1.50")
    assert_clean_error(result, "name = 1.5", "as a number", "quote it")


def test_recipe_headerless_seq_with_a_column_name(tmp_path):
    path = write_yaml(tmp_path / "r.yaml", _seq_recipe(tmp_path, tmp_path, header=False, source_column="word"))
    assert_clean_error(cli("validate", path), "data.seq", "source_column = 'word'", "header is false",
                       "source_column: 0")


def test_data_seq_headerless_file_read_with_header(tmp_path):
    (tmp_path / "g2p.tsv").write_text("abc\tA B C\nde\tD E\n")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _seq_recipe(tmp_path, tmp_path / "g2p.tsv")), "--quiet")
    assert_clean_error(result, "g2p.tsv", "column 'source'", "['abc', 'A B C']", "data.seq.header: false")
    _assert_nothing_trained(tmp_path / "runs")


def test_data_seq_folder_without_train_file(tmp_path):
    (tmp_path / "g2p").mkdir()
    (tmp_path / "g2p" / "eng_dev.tsv").write_text("ab\tA B\n")
    (tmp_path / "g2p" / "readme.txt").write_text("hi\n")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _seq_recipe(tmp_path, tmp_path / "g2p")), "--quiet")
    assert_clean_error(result, "no training file", "train.tsv", "eng_train.tsv", "found ['eng_dev.tsv', 'readme.txt']")


def test_data_seq_folder_of_several_datasets(tmp_path):
    (tmp_path / "g2p").mkdir()
    for name in ("eng_train.tsv", "fre_train.tsv", "fre_test.tsv"):
        (tmp_path / "g2p" / name).write_text("ab\tA B\n")
    result = cli("validate", write_yaml(tmp_path / "r.yaml", _seq_recipe(tmp_path, tmp_path / "g2p", header=False)))
    assert_clean_error(result, "2 datasets", "eng: eng_train.tsv", "fre: fre_test.tsv, fre_train.tsv",
                       "one folder per language")


def test_data_seq_not_utf8(tmp_path):
    (tmp_path / "g2p.tsv").write_bytes(b"source\ttarget\nab\tA B\n\xff\tX\n")
    result = cli("run", write_yaml(tmp_path / "r.yaml", _seq_recipe(tmp_path, tmp_path / "g2p.tsv")), "--quiet")
    assert_clean_error(result, "g2p.tsv, line 3", "data.seq.encoding")


def test_error_message_keeps_square_brackets(tmp_path):
    """rich read `[text]` as markup and printed `pip install 'leankd'`: messages are escaped before printing."""
    missing = tmp_path / "[text]" / "data"
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, data={"source": str(missing)}))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, str(missing))


def test_validate_missing_teacher_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path, teacher={"checkpoint": str(tmp_path / "teacher.safetensors")})
    result = cli("validate", write_yaml(tmp_path / "r.yaml", recipe))
    assert_clean_error(result, "teacher.checkpoint", "teacher.safetensors", "no such file", "remove the line")


def test_validate_cuda_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("validate", write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, device="cuda")))
    assert_clean_error(result, "device = 'cuda'", "CUDA is not available", "device: auto", "cpu")


def test_validate_text_folder_without_train_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "dev.tsv").write_text("label\tsentence\n1\ta\n")
    result = cli("validate", write_yaml(tmp_path / "r.yaml", _text_recipe(tmp_path, tmp_path / "d")))
    assert_clean_error(result, "no training file", "train.tsv", "found ['dev.tsv']")


def test_validate_says_what_it_could_not_check(tmp_path):
    """Data that is not on this machine is not an error for validate (a recipe may be meant for another one), but
    it is said."""
    recipe = _text_recipe(tmp_path, tmp_path / "elsewhere")
    result = cli("validate", write_yaml(tmp_path / "r.yaml", recipe))
    assert result.code == 0, result.text[-3000:]
    assert "not checked: data.source" in result.text and "elsewhere" in result.text and "valid" in result.text
