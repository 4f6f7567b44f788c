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


# ===== cases that already end cleanly (catalogue helper)
# Every case below ended in a clean exit-2 error (130 for Ctrl-C) when the catalogue was written. Recipe mistakes go
# through `leankd validate` (no torch import, about 2 s a case) unless the point is what a `run` into a finished run
# directory leaves behind; data, checkpoint and signal cases go through `leankd run` on a fresh run directory and
# check that the user's own files (data, weights) are untouched. One finished run per module is shared (copied per
# case), one interrupted run likewise.
import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402


def _recipe_file(tmp_path: Path, **overrides) -> Path:
    return write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, **overrides))


def _validate(tmp_path: Path, *sets: str, **overrides) -> CliResult:
    """`leankd validate` of the tiny recipe with `overrides` (and `--set` items); validating writes nothing."""
    args = [a for s in sets for a in ("--set", s)]
    result = cli("validate", _recipe_file(tmp_path, **overrides), *args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"], "validate wrote files"
    return result


def _run_fresh(tmp_path: Path, **overrides) -> CliResult:
    return cli("run", _recipe_file(tmp_path, **overrides), "--quiet")


def _copy(src: Path, dst: Path) -> tuple[Path, dict[str, str]]:
    """A private copy of a shared run directory and its snapshot, so a case can prove it lost nothing."""
    shutil.copytree(src, dst)
    return dst, snapshot(dst)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished tiny run (teacher, baseline, student, report) for the module; cases work on copies of it."""
    tmp = tmp_path_factory.mktemp("finished")
    result = cli("run", write_yaml(tmp / "r.yaml", tiny_recipe(tmp)), "--quiet")
    assert result.code == 0, result.text[-3000:]
    run_dir = tmp / "runs" / "tiny"
    assert {"report.json", "report.md", "recipe.yaml"} <= {p.name for p in run_dir.iterdir()}
    return run_dir


def _png_folder(root: Path, sizes: dict[str, list[int]]) -> Path:
    """An ImageFolder: `sizes` maps each class to the side lengths of its (random, square) PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, sides in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, side in enumerate(sides):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _wav(path: Path, samples: int = 1600, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * samples)


# ---------------------------------------------------------------------------------------------- recipe
def test_recipe_nested_typo_lists_the_allowed_keys(tmp_path):
    result = _validate(tmp_path, train={"epoch": 3})
    assert_clean_error(result, "train.epoch: unknown key (typo?)", "allowed here: epochs, batch_size")


def test_recipe_wrong_type_names_field_and_value(tmp_path):
    assert_clean_error(_validate(tmp_path, train={"epochs": "many"}), "train.epochs = 'many'", "valid integer")


def test_recipe_learning_rate_out_of_range(tmp_path):
    assert_clean_error(_validate(tmp_path, train={"lr": 0}), "train.lr = 0", "greater than 0")


def test_recipe_unknown_optimizer_lists_the_choices(tmp_path):
    assert_clean_error(_validate(tmp_path, train={"optimizer": "adam"}), "train.optimizer = 'adam'",
                       "'sgd' or 'adamw'")


def test_recipe_unknown_loss_kind_lists_the_kinds(tmp_path):
    result = _validate(tmp_path, distill={"loss": [{"kind": "kl"}]})
    from leankd.kd.registry import LOGIT_LOSSES  # the message lists the registry: every loss registered, sorted

    assert_clean_error(result, "distill.loss.0.kind = 'kl'", "unknown loss kind 'kl'",
                       "known: " + ", ".join(sorted(LOGIT_LOSSES.names())))


def test_recipe_loss_of_cross_entropy_only_never_uses_the_teacher(tmp_path):
    result = _validate(tmp_path, distill={"loss": [{"kind": "ce"}]})
    from leankd.kd.registry import LOGIT_LOSSES

    teaching = sorted(n for n in LOGIT_LOSSES.names() if LOGIT_LOSSES.get(n).uses_teacher)
    assert {"kd", "dkd", "dist", "mse", "soft_ce"} <= set(teaching) and "ce" not in teaching
    assert_clean_error(result, "no loss term learns from the teacher (ce only), so the teacher is never used",
                       "add one of " + ", ".join(teaching))


def test_recipe_temperature_on_a_cross_entropy_term(tmp_path):
    result = _validate(tmp_path, distill={"loss": [{"kind": "ce", "temperature": 2}, {"kind": "kd"}]})
    assert_clean_error(result, "distill.loss.0.temperature", "ce takes weight, label_smoothing, not 'temperature'")


def test_recipe_unknown_compress_target_lists_the_targets(tmp_path):
    result = _validate(tmp_path, compress={"targets": ["int4"]})
    assert_clean_error(result, "compress.targets.0 = 'int4': unknown compression target 'int4'",
                       "known: bf16, fp16, int8-dynamic, int8-static, onnx")


def test_recipe_misspelled_compress_target_suggests_the_close_name(tmp_path):
    result = _validate(tmp_path, compress={"targets": ["int8-statc"]})
    assert_clean_error(result, "compress.targets.0 = 'int8-statc'", "did you mean 'int8-static'")


def test_recipe_teacher_cache_with_feature_losses(tmp_path):
    result = _validate(tmp_path, teacher={"cache": True},
                       distill={"features": [{"kind": "hint", "pairs": [["layer1", "layer1"]]}]})
    assert_clean_error(result, "teacher.cache stores logits only", "turn teacher.cache off, or drop the feature losses")


def test_recipe_milestones_not_increasing(tmp_path):
    result = _validate(tmp_path, train={"schedule": "multistep", "milestones": [0.75, 0.5]})
    assert_clean_error(result, "train.milestones = [0.75, 0.5]", "increasing fractions", "e.g. [0.5, 0.75]")


def test_recipe_unknown_device(tmp_path):
    assert_clean_error(_validate(tmp_path, device="gpu"), "device = 'gpu'", "auto, cpu, cuda, cuda:N or mps")


def test_recipe_bad_per_stage_override_names_the_stage(tmp_path):
    result = _validate(tmp_path, teacher={"train": {"epochs": 1, "lr": -1}})
    assert_clean_error(result, "teacher.train.lr = -1.0", "greater than 0")


def test_recipe_assistants_with_feature_losses(tmp_path):
    result = _validate(tmp_path, distill={"assistants": ["resnet8"],
                                          "features": [{"kind": "hint", "pairs": [["layer1", "layer1"]]}]})
    assert_clean_error(result, "distill.assistants with distill.features", "drop one of them")


def test_recipe_keyword_read_as_a_yaml_boolean(tmp_path):
    result = _validate(tmp_path, "data.audio.keyword=yes", data={"task": "keyword_spotting"})
    assert_clean_error(result, "data.audio.keyword = True", "quote the word", "keyword: 'yes'")


def test_recipe_text_task_without_a_tokenizer(tmp_path):
    result = _validate(tmp_path, data={"task": "text_classification"})
    assert_clean_error(result, "data.text.tokenizer", "name the tokenizer's folder")


def test_recipe_text_metric_the_task_does_not_compute_lists_the_allowed_ones(tmp_path):
    text = {"task": "text_classification", "text": {"tokenizer": "words"}}
    result = _validate(tmp_path, "data.text.metric=auc", data=text)
    assert_clean_error(result, "data.text.metric = 'auc'", "allowed: accuracy, macro_f1, mcc, f1_positive for "
                       "text_classification; pearson, spearman for text_regression")
    result = _validate(tmp_path, "data.text.metric=spearman", data=text)
    assert_clean_error(result, "data.text.metric 'spearman' is not computed by data.task text_classification",
                       "allowed: accuracy, macro_f1, mcc, f1_positive")


def test_recipe_not_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- teacher\n- student\n")
    assert_clean_error(cli("validate", path), "r.yaml", "a recipe is a YAML mapping with at least 'teacher' and "
                                                         "'student', got list")


def test_recipe_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("teacher: {model: resnet8\nstudent: {model: resnet8}\n")
    assert_clean_error(cli("validate", path), "r.yaml is not valid YAML", "line")


def test_recipe_missing_student(tmp_path):
    recipe = tiny_recipe(tmp_path)
    del recipe["student"]
    assert_clean_error(cli("validate", write_yaml(tmp_path / "r.yaml", recipe)), "student: required field is missing")


def test_set_without_a_value(tmp_path):
    assert_clean_error(_validate(tmp_path, "train.epochs"), "--set 'train.epochs'", "expected dotted.key=value",
                       "e.g. --set train.epochs=5")


def test_set_below_a_plain_value(tmp_path):
    assert_clean_error(_validate(tmp_path, "name.x=1"), "--set 'name.x=1'", "'name' is not a section")


def test_set_with_a_value_that_is_not_yaml(tmp_path):
    assert_clean_error(_validate(tmp_path, "train.milestones=[0.5"), "--set 'train.milestones=[0.5'",
                       "the value is not valid YAML")


def test_unknown_model_name_suggests_close_names(tmp_path):
    result = _validate(tmp_path, teacher={"model": "resnet9"})
    assert_clean_error(result, "teacher.model: unknown model 'resnet9'", "did you mean resnet8",
                       "'torchvision:<name>'")


def test_misspelled_model_keyword_names_the_accepted_ones(tmp_path):
    result = _validate(tmp_path, student={"model": "wrn", "kwargs": {"depht": 16}})
    assert_clean_error(result, "student.model", "depht", "depth")


def test_bad_set_into_a_finished_run_loses_nothing(tmp_path, finished_run):
    run_dir, before = _copy(finished_run, tmp_path / "run")
    result = cli("run", run_dir / "recipe.yaml", "--run-dir", run_dir, "--quiet", "--set", "train.epochs=0")
    assert_clean_error(result, "train.epochs = 0", "greater than or equal to 1")
    assert_unchanged(before, run_dir, allow_new=False)


# ---------------------------------------------------------------------------------------------- data
def test_data_source_that_does_not_exist(tmp_path):
    result = _run_fresh(tmp_path, data={"source": str(tmp_path / "nowhere")})
    assert_clean_error(result, f"data source '{tmp_path / 'nowhere'}' does not exist",
                       "Give 'demo', an ImageFolder directory")


def test_data_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    result = _run_fresh(tmp_path, data={"source": str(tmp_path / "images")})
    assert_clean_error(result, f"{tmp_path / 'images'}: no class folders with images",
                       "Expected <root>/<class>/<image>")


def test_data_image_that_cannot_be_decoded(tmp_path):
    data = _png_folder(tmp_path / "images", {"cat": [8] * 4, "dog": [8] * 4})
    (data / "dog" / "broken.png").write_bytes(b"this is not a png")
    before = snapshot(data)
    result = _run_fresh(tmp_path, data={"source": str(data)})
    assert_clean_error(result, f"cannot decode image '{data / 'dog' / 'broken.png'}'", "remove or replace the file")
    assert_unchanged(before, data, allow_new=False)


def test_data_images_of_different_sizes(tmp_path):
    data = _png_folder(tmp_path / "images", {"cat": [12, 8, 8, 8], "dog": [8] * 4})
    result = _run_fresh(tmp_path, data={"source": str(data)})
    assert_clean_error(result, "images have different sizes", "cat/0.png' is 12x12", "image_size")


def test_data_truncated_tar(tmp_path):
    data = _png_folder(tmp_path / "images", {"cat": [8] * 4, "dog": [8] * 4})
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data, arcname="images")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # a copy cut short
    result = _run_fresh(tmp_path, data={"source": str(archive)})
    assert_clean_error(result, f"cannot read tar archive {archive}", "complete .tar/.tar.gz")


def test_data_audio_clip_outside_a_label_folder(tmp_path):
    _wav(tmp_path / "audio" / "yes" / "a.wav")
    _wav(tmp_path / "audio" / "stray.wav")
    before = snapshot(tmp_path / "audio")
    recipe = tiny_recipe(tmp_path, teacher={"model": "dscnn_s"}, student={"model": "dscnn_s"})
    recipe["data"] = {"source": str(tmp_path / "audio"), "task": "keyword_spotting",  # limit_test is for images
                      "cache_dir": str(tmp_path / "cache")}
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "audio file 'stray.wav' is not directly inside a label folder",
                       "<root>/<label>/<clip>")
    assert_unchanged(before, tmp_path / "audio", allow_new=False)


def test_data_pairs_file_without_the_target_column(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("source\ttgt\nabc\tcba\nde\ted\n")
    result = _run_fresh(tmp_path, data={"source": str(pairs), "task": "seq2seq"},
                        teacher={"model": "seq2seq_rnn"}, student={"model": "seq2seq_rnn"})
    assert_clean_error(result, f"{pairs}: column 'target' (data.seq.target_column) is not in its header",
                       "['source', 'tgt']")


def test_data_text_file_without_the_label_column(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "train.tsv").write_text("sentence\tlab\nhello world\t1\ngood bye\t0\n")
    result = _run_fresh(tmp_path, data={"source": str(tmp_path / "text"), "task": "text_classification",
                                        "text": {"tokenizer": "words"}},
                        teacher={"model": "text_cnn"}, student={"model": "text_cnn"})
    assert_clean_error(result, "train.tsv: column 'label' (data.text.label_column) is not in its header",
                       "['sentence', 'lab']")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_pickle_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "teacher.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    before = snapshot(tmp_path)
    result = _run_fresh(tmp_path, teacher={"checkpoint": str(evil)})
    assert_clean_error(result, f"{evil} holds pickled objects other than tensors",
                       "Re-save it with torch.save(model.state_dict(), path) or as .safetensors")
    assert not marker.exists(), "unpickling ran the checkpoint's code"
    assert snapshot(tmp_path)["teacher.pt"] == before["teacher.pt"]


def _teacher_weights(finished: Path, dst: Path, edit) -> Path:
    """The finished run's teacher weights, changed by `edit(dict of arrays)`, saved as another safetensors file."""
    from safetensors.numpy import load_file, save_file

    state = load_file(str(finished / "teacher" / "model.safetensors"))
    save_file(edit(state), str(dst))
    return dst


def test_checkpoint_of_another_architecture_lists_the_keys(tmp_path, finished_run):
    ckpt = _teacher_weights(finished_run, tmp_path / "t.safetensors",
                            lambda s: {k: v for k, v in s.items() if not k.startswith("layer2.")})
    result = _run_fresh(tmp_path, teacher={"checkpoint": str(ckpt)})
    assert_clean_error(result, f"weights in {ckpt} do not fit CifarResNet", "missing from checkpoint",
                       "layer2.0.conv1.weight", "Build the same architecture (and num_classes)")


def test_checkpoint_with_another_class_count(tmp_path, finished_run):
    ckpt = _teacher_weights(finished_run, tmp_path / "t.safetensors",
                            lambda s: {k: (v[:5] if k.startswith("classifier.") else v) for k, v in s.items()})
    result = _run_fresh(tmp_path, teacher={"checkpoint": str(ckpt)})
    assert_clean_error(result, "classifier.weight: checkpoint (5, 64) vs model (10, 64)", "num_classes differs?")


# ---------------------------------------------------------------------------------------------- signals
def sigint_as_in_a_terminal() -> None:
    """preexec_fn of a child that a test interrupts: SIGINT at its default disposition. A shell that starts a job in
    the background (`cmd &`, as a CI runner may) makes the job ignore SIGINT, and a process started with SIGINT
    ignored never sees Ctrl-C; a user's terminal never does that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped by a real Ctrl-C (SIGINT) once its teacher has a checkpoint: (exit code, stderr, run dir,
    recipe). The teacher has epochs to spare, so the signal lands while it trains."""
    tmp = tmp_path_factory.mktemp("interrupted")
    recipe = write_yaml(tmp / "r.yaml", tiny_recipe(tmp, teacher={"train": {"epochs": 400}}))
    run_dir = tmp / "runs" / "tiny"
    ckpt = run_dir / "teacher" / "checkpoint.safetensors"
    with open(tmp / "stdout", "w+") as out, open(tmp / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "leankd.cli", "run", str(recipe), "--quiet"], stdout=out,
                                stderr=err, text=True, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
                                preexec_fn=sigint_as_in_a_terminal)
        try:
            deadline = time.monotonic() + 600
            while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before its teacher was interrupted"
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        out.seek(0)
        err.seek(0)
        return CliResult(code, out.read(), err.read()), run_dir, recipe


def test_ctrl_c_exits_130_with_the_resume_hint(interrupted_run):
    result, run_dir, _ = interrupted_run
    assert_clean_error(result, "interrupted", "rerun with --resume to continue", code=130)
    assert (run_dir / "teacher" / "checkpoint.safetensors").is_file(), "the finished epochs were lost"
    assert not (run_dir / "teacher" / "model.safetensors").exists()


def test_interrupted_stage_rerun_without_resume_asks_for_it(tmp_path, interrupted_run):
    _, src, recipe = interrupted_run
    run_dir, before = _copy(src, tmp_path / "run")
    result = cli("run", recipe, "--quiet", "--run-dir", run_dir)
    assert_clean_error(result, f"stage 'teacher' in {run_dir} was interrupted after epoch",
                       "rerun with --resume to continue it, or --force to start the run over")
    assert_unchanged(before, run_dir, allow_new=False)


# ---------------------------------------------------------------------------------------------- compression
def test_compress_to_an_unknown_target_loses_nothing(tmp_path, finished_run):
    run_dir, before = _copy(finished_run, tmp_path / "run")
    result = cli("compress", run_dir, "--to", "int4", "--quiet")
    assert_clean_error(result, "compress.targets.0 = 'int4'", "known: bf16, fp16, int8-dynamic")
    assert_unchanged(before, run_dir, allow_new=False)


def test_compress_refuses_settings_that_would_retrain(tmp_path, finished_run):
    run_dir, before = _copy(finished_run, tmp_path / "run")
    result = cli("compress", run_dir, "--to", "fp16", "--set", "train.epochs=3", "--quiet")
    assert_clean_error(result, "--set train.epochs=3", "changes only compress.* and measure.* settings",
                       "use `leankd run --set ...`")
    assert_unchanged(before, run_dir, allow_new=False)


def test_export_to_an_unknown_format_loses_nothing(tmp_path, finished_run):
    run_dir, before = _copy(finished_run, tmp_path / "run")
    result = cli("export", run_dir, "--format", "tflite", "--quiet")
    assert_clean_error(result, "--format 'tflite' is not supported", "choose one of: onnx, int8")
    assert_unchanged(before, run_dir, allow_new=False)


@pytest.mark.parametrize("extra", [[], ["--remeasure"]])
def test_compress_a_run_without_a_trained_student(tmp_path, finished_run, extra):
    run_dir, before = _copy(finished_run, tmp_path / "run")
    shutil.rmtree(run_dir / "student")
    before = {k: v for k, v in before.items() if not k.startswith("student/")}
    with open(tmp_path / "stdout", "w+") as out, open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "leankd.cli", "compress", str(run_dir), "--to", "fp16",
                                 "--quiet", *extra], stdout=out, stderr=err, text=True,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        try:
            while proc.poll() is None and not (run_dir / "student").exists():
                time.sleep(0.05)
            assert not (run_dir / "student").exists(), "compress started training a student"  # fail fast
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        result = CliResult(proc.returncode, out.read(), err.read())
    assert_clean_error(result, "student", "leankd run")
    assert_unchanged(before, run_dir, allow_new=False)


def test_compress_a_run_directory_that_does_not_exist(tmp_path):
    result = cli("compress", tmp_path / "runs" / "nope", "--to", "fp16")
    assert_clean_error(result, f"{tmp_path / 'runs' / 'nope'} is not a run directory (no recipe.yaml)",
                       "pass the directory `leankd run` made")
    assert not (tmp_path / "runs").exists(), "a missing run directory was created"


# ---------------------------------------------------------------------------------------------- search
def test_search_without_a_search_section(tmp_path):
    result = cli("search", _recipe_file(tmp_path), "--run-dir", tmp_path / "s", "--quiet")
    assert_clean_error(result, "this recipe has no search: section", "add one (search.space")
    assert not (tmp_path / "s").exists()


def test_search_space_naming_a_setting_the_recipe_does_not_have(tmp_path):
    path = _recipe_file(tmp_path, search={"space": {"train.learning_rate": {"low": 0.01, "high": 0.1}}})
    result = cli("search", path, "--run-dir", tmp_path / "s", "--quiet")
    assert_clean_error(result, "search.space.train.learning_rate", "train.learning_rate: unknown key (typo?)",
                       "allowed here: epochs, batch_size, optimizer, lr,")
    assert not (tmp_path / "s").exists()


def test_search_dimension_with_low_above_high(tmp_path):
    result = _validate(tmp_path, search={"space": {"distill.temperature": {"low": 8, "high": 1}}})
    assert_clean_error(result, "search.space.distill.temperature", "low (8) must be below high (1)")


# ---------------------------------------------------------------------------------------------- report, compare
def test_report_of_a_directory_that_does_not_exist(tmp_path):
    result = cli("report", tmp_path / "nope")
    assert_clean_error(result, f"no report found: expected {tmp_path / 'nope' / 'report.json'}",
                       "directory does not exist", "pass the run directory of a finished run")


def test_report_from_corrupt_json_loses_nothing(tmp_path, finished_run):
    run_dir, _ = _copy(finished_run, tmp_path / "run")
    (run_dir / "report.json").write_text('{"schema_version": 1, "models": {')  # cut short
    before = snapshot(run_dir)
    result = cli("report", run_dir)
    assert_clean_error(result, f"{run_dir / 'report.json'} is not readable JSON", "re-run `leankd run`")
    assert_unchanged(before, run_dir, allow_new=False)


def test_report_from_a_newer_leankd_asks_for_an_upgrade(tmp_path, finished_run):
    run_dir, _ = _copy(finished_run, tmp_path / "run")
    report = json.loads((run_dir / "report.json").read_text())
    report["schema_version"] = 999
    (run_dir / "report.json").write_text(json.dumps(report))
    before = snapshot(run_dir)
    result = cli("report", run_dir)
    assert_clean_error(result, "has schema_version 999", "upgrade leankd to read it")
    assert_unchanged(before, run_dir, allow_new=False)


def test_compare_with_a_run_that_has_no_report(tmp_path, finished_run):
    (tmp_path / "half").mkdir()
    result = cli("compare", finished_run, tmp_path / "half", "--output", tmp_path / "table.md")
    assert_clean_error(result, f"{tmp_path / 'half' / 'report.json'}", "directory has no report.json")
    assert not (tmp_path / "table.md").exists()


def test_leaderboard_of_a_directory_that_is_neither_run_nor_search(tmp_path):
    (tmp_path / "stuff").mkdir()
    result = cli("leaderboard", tmp_path / "stuff")
    assert_clean_error(result, "is neither a run directory (report.json) nor a search directory (search.json)")


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
    from leankd.measure import run as measure_run

    _, run_dir = copy_of_finished(finished_tiny, tmp_path)
    assert cli_here("compress", run_dir, "--to", "fp16", "--quiet").code == 0  # an artifact to lose
    before = snapshot(run_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(measure_run, "measure_models", interrupted)  # Ctrl-C while the new artifact is measured
    result = cli_here("compress", run_dir, "--to", "int8-dynamic", "--quiet")
    assert_clean_error(result, "interrupted", code=130)
    assert_unchanged(before, run_dir, allow_new=False)  # report and compressed/fp16 kept, staged int8 discarded


def test_second_run_on_the_same_directory_is_refused(tmp_path):
    # a teacher too long to finish while the second process starts; it is stopped with Ctrl-C afterwards
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, teacher={"train": {"epochs": 500}}))
    run_dir = tmp_path / "runs" / "tiny"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    first = subprocess.Popen([sys.executable, "-m", "leankd.cli", "run", str(path), "--quiet"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=sigint_as_in_a_terminal)
    try:
        deadline = _time.monotonic() + 120
        while not (run_dir / "teacher").exists() and first.poll() is None and _time.monotonic() < deadline:
            _time.sleep(0.1)
        second = cli("run", path, "--quiet")
        overlapping = first.poll() is None  # still training when the second one gave up
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=600)
    assert overlapping, "the first run ended before the second finished: the case proves nothing"
    assert_clean_error(second, "in use by another leankd process", f"pid {first.pid}", f"kill {first.pid}",
                       "--resume")
    assert first.returncode == 130, err[-3000:]  # the holder itself was never disturbed by the refused one
    assert not (run_dir / ".leankd.lock").exists()  # released by the interrupted holder


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


# ============================================================================== losses (LM divergences helper)
def test_jsd_beta_at_an_end_names_the_kl_to_use(tmp_path):
    """TRL's GKD takes beta 0 / 1 as the plain KLs; here JSD(0) would be 0 (no teacher signal), so it is refused
    before anything runs, pointing to forward_kl / reverse_kl."""
    recipe = tiny_recipe(tmp_path, distill={"loss": [{"kind": "jsd", "beta": 0}, {"kind": "ce"}]})
    path = write_yaml(tmp_path / "r.yaml", recipe)
    assert_clean_error(cli("run", path, "--quiet"), "beta", "strictly between 0 and 1", "forward_kl")
    assert not (tmp_path / "runs").exists()


def test_divergence_chunk_rows_zero(tmp_path):
    recipe = tiny_recipe(tmp_path, distill={"loss": [{"kind": "forward_kl", "chunk_rows": 0}]})
    path = write_yaml(tmp_path / "r.yaml", recipe)
    assert_clean_error(cli("validate", path), "chunk_rows", "greater than or equal to 1")


# ============================================================================== models (causal-LM models helper)
def test_lm_model_bad_width_refused_before_training(tmp_path):
    """A causal-LM keyword that cannot build (hidden not a multiple of heads) stops the run before the teacher
    trains, naming both values and a valid hidden size."""
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, student={"model": "gpt",
                                                                          "kwargs": {"hidden": 30, "heads": 4}}))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, "gpt: hidden=30 is not divisible by heads=4", "e.g. hidden=32")
    assert not list((tmp_path / "runs").rglob("*.safetensors"))  # nothing was trained


# ============================================================================================ streams (streams helper)
def _shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar shard of WebDataset samples: (key, {extension: bytes})."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _stream_recipe(tmp_path: Path, source: str, stream: dict, **changes) -> dict:
    recipe = tiny_recipe(tmp_path)
    recipe["data"] = {"source": source, "num_workers": 0, "stream": stream}
    for key, value in changes.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


def _labelled(n: int, start: int = 0) -> list:
    return [(f"s{k:03d}", {"png": _png(10 * k), "cls": str(k % 2).encode()}) for k in range(start, start + n)]


def test_stream_missing_shard_names_it_before_training(tmp_path):
    _shard(tmp_path / "sh" / "train-0.tar", _labelled(8))
    _shard(tmp_path / "sh" / "test-0.tar", _labelled(4, 100))
    recipe = _stream_recipe(tmp_path, f"webdataset:{tmp_path}/sh/train-{{0..1}}.tar",
                            {"test": str(tmp_path / "sh" / "test-0.tar")})
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "1 of the 2 shards", "train-1.tar", "fix the pattern")
    assert not list((tmp_path / "runs").rglob("*.safetensors"))


def test_stream_sample_without_label_names_shard_and_key(tmp_path):
    samples = _labelled(6) + [("orphan", {"png": _png(99)})]
    _shard(tmp_path / "sh" / "train-0.tar", samples)
    _shard(tmp_path / "sh" / "test-0.tar", _labelled(4, 100))
    recipe = _stream_recipe(tmp_path, f"webdataset:{tmp_path}/sh/train-0.tar",
                            {"test": str(tmp_path / "sh" / "test-0.tar")})
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe), "--quiet")
    assert_clean_error(result, "train-0.tar", "sample 'orphan' has no label", "add orphan.cls")
    assert not list((tmp_path / "runs").rglob("*.safetensors"))


def test_stream_with_teacher_cache_is_refused_when_read(tmp_path):
    recipe = _stream_recipe(tmp_path, "webdataset:sh/train-{0..3}.tar", {"test": "sh/test-0.tar"},
                            teacher={"cache": True})
    assert_clean_error(cli("validate", write_yaml(tmp_path / "r.yaml", recipe)), "teacher.cache",
                       "stable sample index", "turn teacher.cache off")


def test_stream_without_a_test_split_is_refused(tmp_path):
    recipe = _stream_recipe(tmp_path, "webdataset:sh/train-{0..3}.tar", {"shuffle": 0})
    assert_clean_error(cli("validate", write_yaml(tmp_path / "r.yaml", recipe)), "data.stream.test",
                       "data it did not train on")


def test_hf_stream_without_datasets_names_the_extra(tmp_path):
    """`datasets` not importable (a stand-in package that raises ImportError first on the path): exit 2, naming the
    extra to install, before anything trains."""
    blocker = tmp_path / "blocker" / "datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('datasets is not installed (simulated)')\n")
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    recipe = _stream_recipe(tmp_path, f"hf-stream:{tmp_path / 'data.parquet'}", {"val": "train"})
    path = write_yaml(tmp_path / "r.yaml", recipe)
    env = {"PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = cli("run", path, "--quiet", env=env)
    assert_clean_error(result, "hf-stream", "pip install 'leankd[stream]'")
    assert not list((tmp_path / "runs").rglob("*.safetensors"))
# ============================================================================================== fsdp (FSDP helper)
def test_fsdp_with_cuda_graphs_is_refused_before_anything_runs(tmp_path):
    """FSDP's gathers run between the kernels a CUDA graph would capture: the pair is refused while the recipe is
    read, naming both settings and the fix; nothing is created."""
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"fsdp": True, "cuda_graphs": True}))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, "fsdp: true with cuda_graphs: true", "set cuda_graphs: false")
    assert not (tmp_path / "runs").exists()


def test_fsdp_in_a_stage_override_with_cuda_graphs_names_the_stage(tmp_path):
    """The same pair made by one stage's override (teacher.train.fsdp) is caught by validate, at its place."""
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, train={"cuda_graphs": True},
                                                       teacher={"train": {"epochs": 1, "fsdp": True}}))
    assert_clean_error(cli("validate", path), "teacher.train", "fsdp: true with cuda_graphs: true",
                       "set cuda_graphs: false")
# ============================================================================== torchrun (scale-out helper)
@pytest.mark.parametrize("command", [["compress", "--to", "qat"], ["export", "--format", "onnx"]])
def test_compress_and_export_under_torchrun_refuse_on_every_rank(tmp_path, command):
    """N copies of `leankd compress`/`export` would build and commit the same artifacts into one run directory at
    once: under torchrun every rank refuses before reading anything (exit 2), rank 0 says to run it as one
    process, and the run directory is untouched."""
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "compressed").mkdir(parents=True)
    (run_dir / "report.json").write_text('{"models": {}}')
    (run_dir / "compressed" / "int8-static.onnx").write_bytes(b"onnx bytes")
    before = snapshot(run_dir)
    for rank in ("0", "1"):
        result = cli(command[0], run_dir, *command[1:], env={"WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank})
        assert result.code == 2, result.text
        assert "Traceback" not in result.text
        if rank == "0":
            assert_clean_error(result, f"leankd {command[0]} runs in one process", "start it without torchrun")
        else:  # rank 0 speaks for the job: one message, not N
            assert result.text.strip() == ""
# ============================================================================== loggers (callbacks helper)
def test_unknown_logger_is_refused_before_training(tmp_path):
    """A typo in `logging:` is a recipe error naming the close name, before the run directory exists."""
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, logging=["tensorbord"]))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, "unknown logger 'tensorbord'", "did you mean 'tensorboard'", "logging")
    assert not (tmp_path / "runs").exists()


def test_logger_without_its_package_names_the_extra(tmp_path):
    """`logging: [wandb]` without wandb installed: exit 2 naming `leankd[wandb]`, before anything is written."""
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    path = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, logging=["wandb"]))
    result = cli("run", path, "--quiet")
    assert_clean_error(result, "logger 'wandb' needs the wandb package", "pip install 'leankd[wandb]'")
    assert not (tmp_path / "runs").exists()


def test_logger_added_to_a_finished_run_keeps_its_results(tmp_path):
    """A missing logger package on a finished run: refused before the lock or any write; nothing changes."""
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    recipe = tiny_recipe(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text("{}")
    before = snapshot(run_dir)
    result = cli("run", write_yaml(tmp_path / "r.yaml", {**recipe, "logging": ["wandb"]}), "--quiet")
    assert_clean_error(result, "leankd[wandb]")
    assert_unchanged(before, run_dir, allow_new=False)
