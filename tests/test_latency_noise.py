"""Timings that survive a noisy machine (measure/timing.py): noise is flagged, identical models agree on a quiet
run, unreliable latencies never become ratios printed as facts, `leankd report --remeasure` re-times from the
weights on disk without losing the old report, and the feature-loss memory is measured (or said to be not)."""
import copy
import json
import random
import time

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from leankd.cli import app
from leankd.measure.latency import interleaved_latency
from leankd.measure.timing import (ROUNDS_MAX, SPREAD_MAX, TWIN_MAX, Samples, architecture_signature, noise_reasons,
                                   summarize_rounds, twin_reasons)
from leankd.report import build_report, render_markdown
from test_failure_catalogue import assert_unchanged, snapshot

runner = CliRunner()


class MLP(nn.Module):
    def __init__(self, sleepy: bool = False, seed: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        self.sleepy, self.rng, self.calls = sleepy, random.Random(seed), 0

    def forward(self, x):
        self.calls += 1
        if self.sleepy and self.calls % 4:  # 3 calls of 4 sleep a random amount: a busy machine, as this twin sees it
            time.sleep(self.rng.uniform(0.5e-3, 3e-3))
        return self.body(x)


@pytest.fixture
def one_thread():
    """A quiet run: one intra-op thread, so no parallel op waits for a core another process holds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- statistics
def test_summary_and_noise_reasons_from_hand_computed_rounds():
    quiet = summarize_rounds(Samples(rounds=[[1.0, 1.1, 1.2], [1.0, 1.05, 1.1], [1.1, 1.2, 1.3]], calls=90))
    assert quiet["median_ms"] == 1.0  # median of the rounds' fastest blocks 1.0, 1.0, 1.1
    assert quiet["min_ms"] == 1.0 and quiet["runs"] == 90 and quiet["round_spread"] == 1.1
    assert quiet["pooled_median_ms"] == 1.1
    assert quiet["spread"] == pytest.approx((1.2 - 1.05) / 1.1, abs=1e-4)  # inclusive quartiles of the 9 blocks
    assert noise_reasons(quiet, "batch 1") == []

    noisy = summarize_rounds(Samples(rounds=[[1.0, 1.1], [3.0, 9.0], [1.0, 1.2]], calls=60))
    assert noisy["median_ms"] == 1.0  # the one disturbed round cannot move the figure
    assert noisy["round_spread"] == 3.0 and noisy["spread"] > SPREAD_MAX
    reasons = noise_reasons(noisy, "batch 1")
    assert len(reasons) == 2 and "interquartile range" in reasons[0] and "rounds disagree" in reasons[1]
    assert f"limit {ROUNDS_MAX}x" in reasons[1]


def test_twins_disagreeing_are_named_and_other_architectures_are_not():
    sig = {"a": ("mlp",), "b": ("mlp",), "c": ("cnn",)}
    out = twin_reasons({"a": 1.0, "b": 1.0 * TWIN_MAX + 0.1, "c": 50.0}, sig, "batch 1")
    assert out["c"] == []  # another architecture may be as slow as it likes
    assert len(out["a"]) == 1 and "b 1.6 ms" in out["a"][0] and len(out["b"]) == 1
    assert twin_reasons({"a": 1.0, "b": 1.4}, sig, "batch 1") == {"a": [], "b": []}


def test_opaque_runtimes_are_never_twins(tmp_path):
    """An ONNX Runtime session has no parameters to compare: an fp32 and an int8 graph of one student (seen: 23.3 vs
    11.2 ms at batch 64 on a quiet machine) must not be called identical models that disagree."""
    from leankd.compress.onnx import OnnxModel, export_onnx

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx")
    assert architecture_signature(OnnxModel(tmp_path / "m.onnx")) is None
    assert architecture_signature(model) == architecture_signature(copy.deepcopy(model))  # real twins still are
    assert architecture_signature(model) != architecture_signature(copy.deepcopy(model).half())
    sigs = {"onnx": None, "int8": None, "a": architecture_signature(model), "b": architecture_signature(model)}
    out = twin_reasons({"onnx": 23.3, "int8": 11.2, "a": 1.0, "b": 1.0}, sigs, "batch 64")
    assert out == {"onnx": [], "int8": [], "a": [], "b": []}


# ------------------------------------------------------------------------------------------- timing
def test_a_model_that_sleeps_at_random_is_flagged_and_its_ratio_is_not_a_fact(one_thread):
    torch.manual_seed(0)
    plain = MLP()
    sleepy = copy.deepcopy(plain)
    sleepy.sleepy = True
    out = interleaved_latency({"teacher": plain, "student": sleepy}, lambda bs: torch.randn(bs, 32), [1],
                              runs=30, warmup=2)
    cpu = out["student"]
    assert cpu["reliable"] is False and cpu["noise"], cpu
    assert cpu["threads"] == 1 and len(cpu["load_avg"]) == 3 and len(cpu["batch_1"]["round_ms"]) == 3

    entry = lambda r, c: {"role": r, "quality": {"accuracy": 0.5}, "latency": {"cpu": c}}  # noqa: E731
    report = build_report({"name": "noisy"}, {"teacher": entry("teacher", out["teacher"]),
                                              "student": entry("student", cpu)})
    ratios = report["ratios"]["vs_teacher"]["student"]
    assert ratios["latency_cpu_x_faster_batch_1"] is None
    assert ratios["unreliable_latency"] == ["latency_cpu_x_faster_batch_1"]
    assert report["models"]["student"]["latency"]["cpu"]["reliable"] is False
    md = render_markdown(report)
    assert "| CPU latency b1 (× faster) | n/a (noisy) |" in md
    assert "(noisy) |" in md.split("CPU latency b1 median / p90")[1].splitlines()[0]
    noise = md.split("## Timing noise")[1]
    assert "KD student, CPU latency:" in noise and "load average" in noise
    assert "leankd report RUN_DIR --remeasure --threads" in noise


def test_identical_models_time_equal_on_a_quiet_run(one_thread):
    """The robust figure (median over rounds of each round's fastest block) of two copies of one model agrees
    within TWIN_MAX even on a shared 2-core CI machine: noise only adds time, the fastest of a round's short blocks
    is its least disturbed one, and with 5 rounds three would have to be disturbed throughout to move the median."""
    torch.manual_seed(0)
    a = MLP()
    out = interleaved_latency({"a": a, "b": copy.deepcopy(a)}, lambda bs: torch.randn(bs, 32), [1, 16], runs=30,
                              warmup=2, rounds=5)
    for bs in (1, 16):
        x, y = out["a"][f"batch_{bs}"]["median_ms"], out["b"][f"batch_{bs}"]["median_ms"]
        assert max(x, y) / min(x, y) <= TWIN_MAX, (bs, x, y)
        assert out["a"][f"batch_{bs}"]["runs"] >= 30


def test_old_reports_without_the_flag_read_as_reliable():
    entry = lambda r, ms: {"role": r, "latency": {"cpu": {"threads": 2, "batch_1": {"median_ms": ms}}}}  # noqa: E731
    report = build_report({"name": "old"}, {"teacher": entry("teacher", 4.0), "student": entry("student", 1.0)})
    assert report["ratios"]["vs_teacher"]["student"]["latency_cpu_x_faster_batch_1"] == 4.0
    assert report["ratios"]["vs_teacher"]["student"]["unreliable_latency"] is None
    assert "(noisy)" not in render_markdown(report) and "## Timing noise" not in render_markdown(report)


# ------------------------------------------------------------------------------------------- re-measure
@pytest.fixture
def finished_run(tmp_path):
    """A run directory as `leankd run` leaves it (recipe, weights, report with a noisy latency), made without
    training: re-measuring only needs the weights to exist."""
    from leankd.models import create_model
    from leankd.train.checkpoint import save_weights

    run = tmp_path / "runs" / "tiny"
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "demo", "limit_train": 64, "limit_test": 32, "val_fraction": 0.25,
                       "cache_dir": str(tmp_path / "cache")},
              "teacher": {"model": "resnet8"}, "student": {"model": "resnet8"},
              "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    models = {}
    for i, role in enumerate(("teacher", "baseline", "student")):
        torch.manual_seed(i)
        (run / role).mkdir()
        save_weights(run / role / "model.safetensors", create_model("resnet8", num_classes=10))
        ms = 758.0 if role == "student" else 0.83  # the figures of issue 22: identical models, 900x apart
        models[role] = {"role": role, "architecture": "resnet8", "quality": {"accuracy": 0.9 - 0.1 * i},
                        "latency": {"cpu": {"threads": 2, "batch_1": {"median_ms": ms, "runs": 30}}}}
    report = build_report({"name": "tiny", "run_dir": str(run)}, models, ["an earlier note"])
    (run / "report.json").write_text(json.dumps(report))
    (run / "report.md").write_text(render_markdown(report))
    return run


def test_remeasure_replaces_the_latency_and_keeps_everything_else(finished_run):
    before = json.loads((finished_run / "report.json").read_text())
    assert before["ratios"]["vs_teacher"]["student"]["latency_cpu_x_faster_batch_1"] == pytest.approx(0.0011, abs=1e-4)
    res = runner.invoke(app, ["report", str(finished_run), "--remeasure", "--threads", "1"])
    assert res.exit_code == 0, res.output
    after = json.loads((finished_run / "report.json").read_text())
    for role in ("teacher", "baseline", "student"):
        cpu = after["models"][role]["latency"]["cpu"]
        assert cpu["threads"] == 1 and cpu["load_avg"] is not None and isinstance(cpu["reliable"], bool)
        assert len(cpu["batch_1"]["round_ms"]) == 3 and cpu["batch_1"]["runs"] >= 30
        assert after["models"][role]["quality"] == before["models"][role]["quality"]
    assert after["models"]["student"]["latency"]["cpu"]["batch_1"]["median_ms"] < 758.0
    assert after["notes"][0] == "an earlier note" and after["notes"][-1].startswith("CPU timings re-measured")
    assert "1 thread(s)" in after["notes"][-1] and after["run"]["environment"]["cpu_threads"] == 1
    md = (finished_run / "report.md").read_text()
    assert "CPU latency b1 median / p90 (ms, 1 thread)" in md and "CPU timings re-measured" in md


def test_a_remeasure_that_fails_midway_leaves_the_old_report(finished_run, monkeypatch):
    import leankd.remeasure

    def broken(*args, **kwargs):
        raise RuntimeError("killed while timing")

    monkeypatch.setattr(leankd.remeasure, "time_on_cpu", broken)
    before = snapshot(finished_run)
    with pytest.raises(RuntimeError, match="killed while timing"):
        leankd.remeasure.remeasure_latency(finished_run, threads=1)
    assert_unchanged(before, finished_run, allow_new=False)


def test_remeasure_without_weights_says_what_is_missing(finished_run):
    (finished_run / "baseline" / "model.safetensors").unlink()
    before = snapshot(finished_run)
    res = runner.invoke(app, ["report", str(finished_run), "--remeasure"])
    assert res.exit_code == 2 and "baseline/model.safetensors" in res.output and "leankd run" in res.output
    assert_unchanged(before, finished_run, allow_new=False)


def test_threads_without_remeasure_is_refused(finished_run):
    before = snapshot(finished_run)
    res = runner.invoke(app, ["report", str(finished_run), "--threads", "1"])
    assert res.exit_code == 2 and "--remeasure" in res.output
    assert_unchanged(before, finished_run, allow_new=False)


# ------------------------------------------------------------------------------------------- step memory
def _feature_rows(**kwargs):
    from leankd.kd.features import Hint
    from leankd.kd.losses import KD
    from leankd.kd.teacher import LiveTeacher
    from leankd.models import create_model
    from leankd.tasks.base import TensorTask
    from leankd.train.step_cost import feature_costs

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    task = TensorTask({"train": (x, y), "val": (x[:8], y[:8])}, num_classes=2)
    torch.manual_seed(0)
    teacher = LiveTeacher(create_model("resnet8", num_classes=2), task)
    return feature_costs(create_model("resnet8", num_classes=2), KD(4.0), [1.0 * Hint([("layer2", "layer2")])], task,
                         teacher, batch_size=16, steps=2)


def test_a_feature_loss_holds_memory_for_backward(one_thread):
    base, hint = _feature_rows()
    assert base["memory_kind"] == "tensor_bytes" and base["extra_held_mb"] == 0.0
    # the hint keeps the teacher's layer2 map [16, 32, 8, 8] fp32 (131 kB) and the adapter's output alive
    assert hint["extra_held_mb"] >= 16 * 32 * 8 * 8 * 4 / 1e6
    assert hint["held_mb"] <= hint["peak_mb"] and hint["extra_mb"] >= 0
    assert isinstance(hint["reliable"], bool) and hint["threads"] == 1


def test_feature_loss_memory_says_not_measurable_instead_of_zero(one_thread, monkeypatch):
    import leankd.train.step_cost as step_cost

    def unavailable():
        raise ImportError("no dispatch modes here")

    monkeypatch.setattr(step_cost, "_make_live_storage_counter", unavailable)
    rows = _feature_rows()
    assert all(r["memory_kind"] == "not measurable: ImportError" for r in rows)
    assert all(r["extra_mb"] is None and r["extra_held_mb"] is None for r in rows)
    report = build_report({"name": "mem"}, {"student": {"role": "student", "training": {"feature_costs": rows}}})
    table = render_markdown(report).split("## Layer distillation: cost per step")[1]
    assert "not measurable" in table and "| 0.00 |" not in table


# ------------------------------------------------------------------------------------------- streaming
def test_streaming_timing_carries_the_verdict_and_the_report_marks_it(one_thread):
    from leankd.data.melspec import LogMel
    from leankd.models.crnn import CRNN
    from leankd.models.streaming import StreamingKWS, chunk_latency

    torch.manual_seed(0)
    stats = chunk_latency(StreamingKWS(LogMel(), CRNN(12, conv_norm_act=True).eval()), 1600, runs=6, warmup=2)
    assert stats["runs"] >= 6 and stats["threads"] == 1 and len(stats["load_avg"]) == 3
    assert stats["reliable"] is (not stats["noise"])
    assert stats["real_time_factor"] == pytest.approx(stats["median_ms"] / 100.0)
    flagged = {**stats, "reliable": False, "noise": ["streaming chunk: rounds disagree (hand-made)"]}
    report = build_report({"name": "kws"}, {"student": {"role": "student", "streaming": flagged}})
    md = render_markdown(report)
    assert "| streaming: real-time factor |" in md and md.count("(noisy)") >= 2
    assert "KD student, streaming: streaming chunk: rounds disagree (hand-made)" in md


# ------------------------------------------------------------------------------------------- seq2seq decoding
def test_decoding_timing_carries_the_verdict_without_a_twin_check(one_thread, monkeypatch):
    import leankd.measure.timing as timing
    from leankd.tasks.seq2seq import decoding_latency
    from test_seq2seq import _model, _task

    task = _task(n_train=60, beam=2)
    small = _model(task, hidden=16, embed_dim=8)
    out = decoding_latency({"a": small, "b": copy.deepcopy(small), "big": _model(task)}, task, batch_sizes=(1,),
                           runs=3, warmup=1)
    block = out["a"]
    assert [r["search"] for r in block["latency"]] == ["greedy", "beam2"]
    assert block["threads"] == 1 and len(block["load_avg"]) == 3 and block["reliable"] is (not block["noise"])
    assert all(r["median_batch_ms"] > 0 and r["ms_per_sequence"] == pytest.approx(r["median_batch_ms"], abs=1e-3)
               for r in block["latency"])  # batch 1: per sequence = per batch
    # no twin check for decoding: a same-shape model that emits its end symbol later legitimately takes longer
    monkeypatch.setattr(timing, "TWIN_MAX", 1.0)
    out = decoding_latency({"a": small, "b": copy.deepcopy(small), "big": _model(task)}, task, batch_sizes=(1,),
                           runs=3, warmup=1)
    assert not any("identical models" in n for role in out for n in out[role]["noise"])
