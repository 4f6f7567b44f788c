"""Keyword spotting end to end on a tiny synthetic Speech-Commands-style folder: each word is a tone of its own
pitch, spoken by several "speakers", so a CRNN can learn it in a few epochs on 2 cores."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from leankd.cli import app
from leankd.recipe import AudioConfig, DataConfig
from leankd.tasks import build_task

runner = CliRunner()
SR = 16000
WORDS = {"yes": 400.0, "no": 700.0, "up": 1100.0}


def make_clips(root: Path, speakers: int = 12, takes: int = 2) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    for word, freq in WORDS.items():
        (root / word).mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            for k in range(takes):
                pitch = freq * (1 + 0.05 * rng.standard_normal())
                start = rng.integers(0, SR // 4)
                env = ((t >= start / SR) & (t < start / SR + 0.5)).astype(np.float32)
                wave = 0.3 * np.sin(2 * np.pi * pitch * t) * env + 0.01 * rng.standard_normal(SR)
                sf.write(root / word / f"{s:08x}_nohash_{k}.wav", wave.astype(np.float32), SR, subtype="PCM_16")
    (root / "_unknown_").mkdir(exist_ok=True)
    for s in range(speakers):  # a word inside _unknown_, usable as a binary keyword
        wave = 0.3 * np.sin(2 * np.pi * 1700.0 * t) * (t < 0.5) + 0.01 * rng.standard_normal(SR)
        sf.write(root / "_unknown_" / f"sheila_{s:08x}_nohash_0.wav", wave.astype(np.float32), SR, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("kws"))


def _cfg(clips: Path, tmp: Path, **audio) -> DataConfig:
    return DataConfig(task="keyword_spotting", source=str(clips), val_fraction=0.2, cache_dir=str(tmp / "cache"),
                      audio=AudioConfig(test_fraction=0.25, **audio))


def test_task_batches_are_log_mels_and_epochs_reproducible(clips, tmp_path):
    task = build_task(_cfg(clips, tmp_path), torch.device("cpu"), seed=3)
    assert task.kind == "keyword_spotting" and task.class_names == ["_unknown_", "no", "up", "yes"]
    frames = 1 + (SR - 400) // 160
    x = task.example_inputs(2)
    assert x.shape == (2, 40, frames) and x.dtype == torch.float32
    a = next(task.train_batches(epoch=1, batch_size=8, seed=3))
    b = next(task.train_batches(epoch=1, batch_size=8, seed=3))
    c = next(task.train_batches(epoch=2, batch_size=8, seed=3))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)  # resume-safe augmentation
    assert not torch.equal(a.inputs, c.inputs)
    # eval batches are not augmented: the same clip gives the same features every time
    e1 = next(task.eval_batches("test", 4)).inputs
    e2 = next(task.eval_batches("test", 4)).inputs
    assert torch.equal(e1, e2)
    assert task.model_defaults() == {"n_mels": 40}


def test_binary_keyword_task_reports_fa_fr_metrics(clips, tmp_path):
    task = build_task(_cfg(clips, tmp_path, keyword="sheila"), torch.device("cpu"), seed=0)
    assert task.class_names == ["other", "sheila"]
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5], [-1.0, 1.0]])
    m = task.metrics(logits, torch.tensor([0, 1, 1, 0]))
    assert {"accuracy", "fa_fr_auc", "frr_at_far", "far_target"} <= set(m)
    assert m["far_target"] == 0.01


def test_unknown_keyword_lists_the_words(clips, tmp_path):
    from leankd.errors import LeanKDError

    with pytest.raises(LeanKDError, match="sheila"):
        build_task(_cfg(clips, tmp_path, keyword="marvin"), torch.device("cpu"), seed=0)


def _recipe(tmp: Path, clips: Path, **audio) -> Path:
    recipe = {
        "name": "kws", "output_dir": str(tmp / "runs"), "device": "cpu",
        "data": {"task": "keyword_spotting", "source": str(clips), "val_fraction": 0.2,
                 "cache_dir": str(tmp / "cache"), "audio": {"test_fraction": 0.25, **audio}},
        "teacher": {"model": "crnn", "train": {"epochs": 6}},
        "student": {"model": "crnn_small"},
        "train": {"epochs": 6, "batch_size": 16, "optimizer": "adamw", "lr": 0.005, "schedule": "onecycle"},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1, 4]},
        "compress": {"targets": ["fp16", "int8-dynamic"]},
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_kws_run_reports_streaming_memory_and_compressed_students(clips, tmp_path):
    out = runner.invoke(app, ["run", str(_recipe(tmp_path, clips)), "--quiet"])
    assert out.exit_code == 0, out.output
    run = tmp_path / "runs" / "kws"
    rep = json.loads((run / "report.json").read_text())
    models = rep["models"]
    assert rep["run"]["task"] == "keyword_spotting" and rep["run"]["dataset"]["split"] == "speaker-disjoint"
    assert models["teacher"]["quality"]["accuracy"] > 0.6  # tones are easy: the pipeline really learns
    for role in ("teacher", "baseline", "student"):
        s = models[role]["streaming"]
        assert s["chunk_ms"] == 100 and s["mode"] == "incremental" and 0 < s["real_time_factor"] < 1
        assert models[role]["memory"]["model_memory_mb"] > 0
    vs = rep["ratios"]["vs_teacher"]["student"]
    assert vs["macs_x_fewer"] >= 10 and vs["memory_x_less"] >= 10
    # the GRU and Linear layers of the student run in int8; the conv is named as left in float
    dyn = models["student_int8_dynamic"]["artifact"]
    assert any("gru" in q.lower() for q in dyn["quantized"]) and dyn["left_in_float"]
    md = (run / "report.md").read_text()
    assert "streaming: real-time factor" in md and "model memory b1" in md


def test_audio_settings_belong_to_keyword_spotting_only(tmp_path):
    from leankd.errors import RecipeError
    from leankd.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"teacher": {"model": "crnn"}, "student": {"model": "crnn_small"},
                                    "data": {"task": "keyword_spotting"}}))
    assert load_recipe(path).data.audio == AudioConfig()  # resolved, so left-out and written-out fingerprint alike
    path.write_text(yaml.safe_dump({"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"},
                                    "data": {"audio": {"n_mels": 20}}}))
    with pytest.raises(RecipeError, match="keyword_spotting"):
        load_recipe(path)
    path.write_text(yaml.safe_dump({"teacher": {"model": "crnn"}, "student": {"model": "crnn_small"},
                                    "data": {"task": "keyword_spotting", "audio": {"win_length": 800}}}))
    with pytest.raises(RecipeError, match="win_length"):
        load_recipe(path)
