"""End-to-end: a tiny image recipe through the CLI — report contents, stage reuse, --force, a real kill and
--resume ending with the same metrics as an uninterrupted run, and clear errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.io import write_png
from typer.testing import CliRunner

from leankd.cli import app

runner = CliRunner()
COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40)]


def make_image_folder(root: Path, per_class=(24, 8), size=16) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in zip(("train", "test"), per_class):
        for c, color in enumerate(COLORS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = torch.tensor(color, dtype=torch.float32)[:, None, None].expand(3, size, size)
                img = (base + 60 * torch.randn(3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
                write_png(img, str(d / f"{i:03d}.png"))
    return root


def write_recipe(tmp_path: Path, data_dir: Path, **overrides) -> Path:
    recipe = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": str(data_dir), "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache")},
        "teacher": {"model": "resnet14", "train": {"epochs": 3}},
        "student": {"model": "resnet8"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1, 4]},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def quality(run_dir: Path) -> dict:
    rep = json.loads((run_dir / "report.json").read_text())
    return {role: m["quality"] for role, m in rep["models"].items()}


def test_run_writes_full_report_and_reuses_stages(tmp_path, data):
    recipe = write_recipe(tmp_path, data)
    result = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["schema_version"] == 1 and list(rep["models"]) == ["teacher", "baseline", "student"]
    for role, m in rep["models"].items():
        assert m["quality"]["split"] == "test" and m["quality"]["num_samples"] == 32
        assert m["cost"]["params"] > 0 and m["cost"]["macs"] > 0 and m["cost"]["size_bytes"] > 0
        assert {"batch_1", "batch_4"} <= set(m["latency"]["cpu"])
        assert m["training"]["epochs"] == (3 if role == "teacher" else 2)
        assert (run_dir / role / "model.safetensors").exists()
        assert len((run_dir / role / "metrics.jsonl").read_text().splitlines()) == m["training"]["epochs"]
        assert not (run_dir / role / "checkpoint.safetensors").exists()
    assert rep["run"]["dataset"]["train_size"] == 72 and rep["run"]["dataset"]["val_size"] == 24
    assert rep["models"]["student"]["training"]["loss"] == "0.9*kd(T=4) + 0.1*ce"
    r = rep["ratios"]["vs_teacher"]["student"]
    t, s = rep["models"]["teacher"], rep["models"]["student"]
    assert r["params_x_fewer"] == pytest.approx(t["cost"]["params"] / s["cost"]["params"], rel=1e-3)
    md = (run_dir / "report.md").read_text()
    for word in ("Teacher", "Baseline student", "KD student", "MACs", "latency"):
        assert word in md
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert "report:" in result.output

    # second run: every stage reused, same numbers (the models are re-evaluated from the weights on disk)
    first_quality = quality(run_dir)
    again = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert again.exit_code == 0, again.output
    assert again.output.count("reusing") == 3
    assert quality(run_dir) == first_quality
    assert json.loads((run_dir / "report.json").read_text())["models"]["student"]["quality"] == s["quality"]

    # a changed student setting redoes only the student stages; --force redoes everything
    changed = write_recipe(tmp_path, data, distill={"temperature": 2})
    out = runner.invoke(app, ["run", str(changed), "--quiet"])
    assert out.exit_code == 0 and out.output.count("reusing") == 2 and "recipe changed" in out.output
    forced = runner.invoke(app, ["run", str(changed), "--quiet", "--force"])
    assert forced.exit_code == 0 and "reusing" not in forced.output

    # leankd report re-renders; compare lists both runs
    os.remove(run_dir / "report.md")
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0 and (run_dir / "report.md").exists()
    cmp = runner.invoke(app, ["compare", str(run_dir), str(run_dir)])
    assert cmp.exit_code == 0 and "resnet8" in cmp.output


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "leankd.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_to_the_same_result(tmp_path, data):
    recipe = write_recipe(tmp_path, data, teacher={"model": "resnet14", "train": {"epochs": 4}})
    reference = runner.invoke(app, ["run", str(recipe), "--quiet", "--run-dir", str(tmp_path / "ref")])
    assert reference.exit_code == 0, reference.output

    killed_dir = tmp_path / "killed"
    proc = _run_cli(["run", str(recipe), "--quiet", "--run-dir", str(killed_dir)])
    ckpt = killed_dir / "teacher" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "the teacher never wrote its first checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "report.json").exists()
    # a kill may land mid-write: then a temp file is left, never a torn checkpoint (the resume below reads it)

    refused = runner.invoke(app, ["run", str(recipe), "--quiet", "--run-dir", str(killed_dir)])
    assert refused.exit_code == 2 and "--resume" in refused.output and "interrupted" in refused.output

    resumed = runner.invoke(app, ["run", str(recipe), "--quiet", "--resume", "--run-dir", str(killed_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    assert not list(killed_dir.rglob("*.tmp")), "temp files of the killed writes are cleaned up"
    assert quality(killed_dir) == quality(tmp_path / "ref")
    for role in ("teacher", "baseline", "student"):
        ref_rows = (tmp_path / "ref" / role / "metrics.jsonl").read_text().splitlines()
        got_rows = (killed_dir / role / "metrics.jsonl").read_text().splitlines()
        strip = lambda rows: [{k: v for k, v in json.loads(r).items() if "time" not in k and "per_s" not in k}
                              for r in rows]
        assert strip(got_rows) == strip(ref_rows)


def test_bad_recipe_exits_2_with_a_clear_message(tmp_path, data):
    recipe = write_recipe(tmp_path, data, train={"epochs": 2, "batch_size": 16, "lr": 0.05, "optimiser": "sgd"})
    for command in ("validate", "run"):
        out = runner.invoke(app, [command, str(recipe)])
        assert out.exit_code == 2
        assert "train.optimiser" in out.output and "unknown key" in out.output and "optimizer" in out.output
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    typo = write_recipe(tmp_path, data, student={"model": "resnet2O"})
    out = runner.invoke(app, ["validate", str(typo)])
    assert out.exit_code == 2 and "resnet20" in out.output


def test_missing_data_and_class_mismatch_fail_before_training(tmp_path, data):
    recipe = write_recipe(tmp_path, data, data={"source": str(tmp_path / "no_such_dir")})
    out = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert out.exit_code == 2 and "no_such_dir" in out.output

    from leankd.models import create_model
    from leankd.train.checkpoint import save_weights

    save_weights(tmp_path / "t5.safetensors", create_model("resnet14", num_classes=5))
    recipe = write_recipe(tmp_path, data, teacher={"model": "resnet14", "checkpoint": str(tmp_path / "t5.safetensors")})
    out = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert out.exit_code == 2 and "classifier" in out.output
    assert not (tmp_path / "runs" / "tiny" / "baseline").exists()


def test_teacher_checkpoint_is_loaded_not_trained(tmp_path, data):
    from leankd.models import create_model
    from leankd.train.checkpoint import save_weights

    save_weights(tmp_path / "t.safetensors", create_model("resnet14", num_classes=4))
    recipe = write_recipe(tmp_path, data, teacher={"model": "resnet14", "checkpoint": str(tmp_path / "t.safetensors")},
                          baseline=False)
    out = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert out.exit_code == 0, out.output
    rep = json.loads((tmp_path / "runs" / "tiny" / "report.json").read_text())
    assert list(rep["models"]) == ["teacher", "student"]
    assert rep["models"]["teacher"]["training"] is None
    assert rep["models"]["teacher"]["origin"].startswith("checkpoint:")


def test_streamed_and_in_memory_paths_give_the_same_batches(tmp_path, data):
    """A folder too large for memory streams through a DataLoader; batches, augmentation and order are identical."""
    from leankd.recipe import DataConfig
    from leankd.tasks.image import build_image_task

    mem = build_image_task(DataConfig(source=str(data), in_memory=True, cache_dir=str(tmp_path)), torch.device("cpu"), 0)
    streamed = build_image_task(DataConfig(source=str(data), in_memory=False, num_workers=0), torch.device("cpu"), 0)
    assert mem.describe()["train_size"] == streamed.describe()["train_size"] == 88
    assert mem.split_size("val") == streamed.split_size("val") == 8
    a = next(mem.train_batches(epoch=1, batch_size=16, seed=0))
    b = next(streamed.train_batches(epoch=1, batch_size=16, seed=0))
    assert torch.equal(a.targets, b.targets)

    def pixels(task, x):  # undo normalization: mean/std may differ (a sample is used when streaming)
        mean, std = (torch.tensor(v)[:, None, None] for v in (task.transform.mean, task.transform.std))
        return x * std + mean

    assert torch.allclose(pixels(mem, a.inputs), pixels(streamed, b.inputs), atol=1e-5)
    xs, ys = zip(*[(batch.inputs, batch.targets) for batch in streamed.eval_batches("test", 10)])
    assert torch.equal(torch.cat(ys), torch.cat([bt.targets for bt in mem.eval_batches("test", 10)]))
    assert streamed.example_inputs(4).shape == (4, 3, 16, 16)


def test_every_model_is_measured_in_the_inputs_memory_layout(tmp_path, data, monkeypatch):
    """A teacher loaded as NCHW must not be timed against channels_last students."""
    from leankd.measure import models as measuring
    from leankd.models import create_model
    from leankd.recipe import DataConfig, MeasureConfig
    from leankd.tasks.image import build_image_task

    seen = []

    def fake_profile(model, *args, **kwargs):
        conv_weights = [p for p in model.parameters() if p.dim() == 4]
        seen.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights))
        return {"cost": {}, "latency": {}, "memory": {}}

    monkeypatch.setattr(measuring, "profile_model", fake_profile)
    task = build_image_task(DataConfig(source=str(data), cache_dir=str(tmp_path)), torch.device("cpu"), 0,
                            channels_last=True)
    model = create_model("resnet8", num_classes=4)  # NCHW
    measuring.measure_models({"teacher": model}, task, MeasureConfig(latency_batch_sizes=[1, 2]))
    assert seen == [True]


def test_split_seed_keeps_the_examples_when_the_seed_changes(tmp_path, data):
    """data.split_seed pins which examples train and validate (and so the normalization a loaded teacher was
    trained with); without it, the run's seed picks the split."""
    from leankd.pipeline import Pipeline
    from leankd.recipe import load_recipe

    def val_split(seed: int, split_seed=None):
        over = {"seed": seed, "data": {"split_seed": split_seed}} if split_seed is not None else {"seed": seed}
        r = load_recipe(write_recipe(tmp_path, data, **over))
        task = Pipeline(r, tmp_path / f"run{seed}-{split_seed}", quiet=True).build_task()
        x, y = zip(*[(b.inputs, b.targets) for b in task.eval_batches("val", 100)])
        return torch.cat(x), task.transform.mean

    x0, mean0 = val_split(0)
    x1, mean1 = val_split(1)
    assert x0.shape == x1.shape and not torch.equal(x0, x1)  # another seed, other examples
    pinned, pinned_mean = val_split(1, split_seed=0)
    assert torch.equal(pinned, x0) and tuple(pinned_mean) == tuple(mean0)


def test_split_seed_at_its_default_leaves_fingerprints_unchanged():
    """Runs made before data.split_seed existed keep their stages (the setting is absent from the fingerprint when
    unset or equal to the run's seed); another split is another fingerprint."""
    from leankd.stages import _data_settings
    from leankd.recipe import DataConfig

    unset = _data_settings(DataConfig().model_dump(), seed=3)
    assert "split_seed" not in unset
    assert _data_settings(DataConfig(split_seed=3).model_dump(), seed=3) == unset
    assert _data_settings(DataConfig(split_seed=0).model_dump(), seed=3) != unset
