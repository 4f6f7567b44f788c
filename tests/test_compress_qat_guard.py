"""QAT never collapses silently: the divergence watch stops an attempt whose loss rises (or is not finite) or whose
accuracy falls below the fake-quantized start (= int8-static), and the qat target then retries at a lower lr and
finally keeps the int8-static model - saying so in report.json and report.md."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from leankd.cli import app
from leankd.compress.qat import prepare_qat
from leankd.compress.qat_guard import DivergenceWatch, QATDiverged, StartPoint, measure_start
from leankd.kd.losses import CE
from leankd.tasks.base import Batch
from test_compress_pipeline import data, finished_run  # noqa: F401 - fixtures: a finished tiny resnet8 run

runner = CliRunner()


class Recorder:
    def __init__(self):
        self.calls = []

    def start_epoch(self, epoch, epochs, steps):
        self.calls.append(("start", epoch))

    def update(self, step, **m):
        self.calls.append(("update", step))

    def end_epoch(self, row):
        self.calls.append(("end", row["epoch"], row["train_loss"]))


def test_margin_is_the_recipe_points_or_two_standard_errors_when_more():
    # 2 x 100 x sqrt(0.9 x 0.1 / 100) = 6.0 points on 100 examples; 0.6 on 10,000, so the floor (2 points) wins
    assert StartPoint(0.5, 0.9, "val", 100).margin_points(2.0) == pytest.approx(6.0)
    assert StartPoint(0.5, 0.9, "val", 10_000).margin_points(2.0) == pytest.approx(2.0)
    assert StartPoint(0.5, None, "val", 100).margin_points(2.0) == 2.0  # regression: no accuracy


def test_watch_stops_on_rising_or_non_finite_loss_and_closes_the_display():
    start = StartPoint(loss=0.5, accuracy=0.9, split="val", examples=10_000)
    inner = Recorder()
    watch = DivergenceWatch(start, None, None, loss_factor=2.0, margin_points=2.0, inner=inner)
    watch.start_epoch(1, 2, 20)
    watch.update(5, loss=1.01, accuracy=0.5, samples_per_s=10.0)  # above 2 x 0.5, but only 5 of 10 steps seen
    watch.update(10, loss=0.99, accuracy=0.5, samples_per_s=10.0)  # 10 steps, below 2 x 0.5: fine
    with pytest.raises(QATDiverged, match=r"rose to 1\.01 .* above 2 x its start 0\.5"):
        watch.update(11, loss=1.01, accuracy=0.5, samples_per_s=10.0)
    assert inner.calls == [("start", 1), ("update", 5), ("update", 10), ("update", 11), ("end", 1, 1.01)]
    watch.start_epoch(1, 2, 20)
    with pytest.raises(QATDiverged, match="became nan at step 1"):  # non-finite: at once, whatever the step
        watch.update(1, loss=math.nan, accuracy=0.1, samples_per_s=10.0)


def test_watch_stops_when_accuracy_falls_below_the_ptq_start_by_more_than_the_margin():
    start = StartPoint(loss=0.5, accuracy=0.9, split="val", examples=100)  # margin 6.0 points (2 SE)
    watch = DivergenceWatch(start, None, None, loss_factor=2.0, margin_points=2.0)
    watch.end_epoch({"epoch": 1, "train_loss": 0.4, "val_accuracy": 0.85})  # 5 points below: within the margin
    with pytest.raises(QATDiverged, match=r"83\.00%, 7\.00 points below .*90\.00%.*margin 6\.00"):
        watch.end_epoch({"epoch": 2, "train_loss": 0.4, "val_accuracy": 0.83})
    with pytest.raises(QATDiverged, match="loss of epoch 3 is inf"):
        watch.end_epoch({"epoch": 3, "train_loss": math.inf, "val_accuracy": 0.9})


def test_diverging_qat_falls_back_to_int8_static_and_says_so(finished_run):  # noqa: F811
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "qat", "--set", "compress.qat.epochs=1",
                              "--set", "compress.qat.lr=1000", "--set", "compress.qat.retries=1",
                              "--set", "compress.qat.control=false", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "qat diverged at lr 1000" in out.output and "retrying at lr 100" in out.output
    assert "qat diverged at lr 100 " in out.output and "keeping the int8-static model" in out.output
    rep = json.loads((finished_run / "report.json").read_text())
    qat, ptq = rep["models"]["student_qat"], rep["models"]["student_int8_static"]
    notes = qat["artifact"]["notes"]
    assert len(notes) == 1 and notes[0].startswith("QAT FELL BACK TO int8-static")
    assert "lr 1000: " in notes[0] and "lr 100: " in notes[0]  # both attempts and why they were stopped
    # the artifact is the PTQ model of the same student: its accuracy, not a collapsed one
    assert qat["quality"]["accuracy"] == ptq["quality"]["accuracy"]
    assert qat["quality"]["accuracy"] > 0.3  # 4 classes: chance is 25 %
    assert qat.get("training") is None  # no fine-tuned model stands behind it
    assert [n for n in rep["notes"] if n.startswith("Quantization-aware distillation")] == [
        "Quantization-aware distillation diverged at every lr tried: the qat artifact is the int8-static model (see "
        "its note), so it measures PTQ, not QAT."]
    md = (finished_run / "report.md").read_text()
    assert "qat: QAT FELL BACK TO int8-static" in md


class _Task:
    """A 3-class task of 40 fixed examples (two batches of 16, one of 8), no validation split."""

    device = torch.device("cpu")

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)

    def _batches(self, bs):
        for i in range(0, 40, bs):
            yield Batch(self.x[i:i + bs], self.y[i:i + bs])

    def train_batches(self, epoch, bs, seed):
        return self._batches(bs)

    def eval_batches(self, split, bs):
        assert split == "train"  # no val split: the train split, never the test split
        return self._batches(bs)

    def has_split(self, split):
        return split == "train"

    def forward(self, model, inputs):
        return model(inputs)

    def metrics(self, logits, targets):
        return {"accuracy": float((logits.argmax(1) == targets).float().mean())}


def test_start_point_is_the_fake_quantized_loss_and_accuracy_and_moves_no_observer():
    torch.manual_seed(0)
    task = _Task()
    qat = prepare_qat(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    qat.calibrate([task.x[:16]], lambda m, x: m(x))
    qat.set_quantize(True)
    ranges = [(fq.min_val.item(), fq.max_val.item()) for fq in qat.fake_quants()]
    start = measure_start(qat.model, task, CE(), None, batch_size=16, seed=0)
    assert [(fq.min_val.item(), fq.max_val.item()) for fq in qat.fake_quants()] == ranges
    with torch.no_grad():
        logits = qat.model.eval()(task.x)
    assert start.loss == pytest.approx(F.cross_entropy(logits, task.y).item(), rel=1e-5)  # all 40, batch-weighted
    assert start.accuracy == pytest.approx((logits.argmax(1) == task.y).float().mean().item())
    assert (start.split, start.examples) == ("train", 40)


def test_start_point_never_reads_the_split_the_report_is_measured_on():
    class ReportsOnVal(_Task):
        eval_split = "val"

        def has_split(self, split):
            return split in ("train", "val")  # eval_batches still refuses anything but train

    qat = prepare_qat(nn.Sequential(nn.Linear(4, 3)))
    start = measure_start(qat.model, ReportsOnVal(), CE(), None, batch_size=16, seed=0)
    assert (start.split, start.examples) == ("train", 40)
