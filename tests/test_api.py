"""The Python API through the same loop as images: a tiny GRU sequence classifier on generated sequences."""
import json

import pytest
import torch
from torch import nn

import leankd
from leankd.errors import DataError, ModelError
from leankd.recipe import TrainConfig
from leankd.tasks.base import TensorTask
from leankd.train.loop import fit


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int, num_classes: int = 4, features: int = 6):
        super().__init__()
        self.num_classes = num_classes
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h[-1])


def sequences(n, seed, length=12, features=6, classes=4):
    """Class c = which feature channel carries a pulse somewhere in the sequence (needs memory to solve)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, length, features, generator=g)
    pos = torch.randint(0, length, (n,), generator=g)
    x[torch.arange(n), pos, y] += 3.0
    return x, y


@pytest.fixture(scope="module")
def data():
    return sequences(512, 0), sequences(128, 1), sequences(256, 2)


@pytest.fixture(scope="module")
def teacher(data):
    train, val, _ = data
    torch.manual_seed(0)
    model = GRUClassifier(48)
    fit(model, TensorTask({"train": train, "val": val}, num_classes=4),
        TrainConfig(epochs=6, batch_size=32, optimizer="adamw", lr=1e-2, weight_decay=0.0))
    return model


def test_distill_gru_through_the_same_loop(tmp_path, data, teacher):
    train, val, test = data
    torch.manual_seed(1)
    student = GRUClassifier(8)
    result = leankd.distill(
        teacher, student, train, val, test_data=test,
        loss=leankd.losses.KD(temperature=2) * 0.8 + 0.2 * leankd.losses.CE(),
        epochs=6, batch_size=32, optimizer="adamw", lr=2e-2, weight_decay=0.0,
        run_dir=tmp_path / "run", measure={"latency_runs": 30, "latency_batch_sizes": [1, 8], "latency_warmup": 1},
    )
    rep = result.report
    assert list(rep["models"]) == ["teacher", "baseline", "student"]
    t, b, s = (rep["models"][k] for k in ("teacher", "baseline", "student"))
    assert t["quality"]["split"] == "test" and t["quality"]["num_samples"] == 256
    assert t["quality"]["accuracy"] > 0.9  # the teacher learned the task
    assert s["quality"]["accuracy"] > 0.5 and b["quality"]["accuracy"] > 0.25
    assert t["cost"]["params"] > 5 * s["cost"]["params"]
    assert rep["ratios"]["vs_teacher"]["student"]["params_x_fewer"] == pytest.approx(
        t["cost"]["params"] / s["cost"]["params"], rel=1e-3)
    gain = 100 * (s["quality"]["accuracy"] - b["quality"]["accuracy"])
    assert rep["ratios"]["kd_gain_points"] == pytest.approx(gain, abs=1e-3)
    assert s["training"]["loss"] == "0.8*kd(T=2) + 0.2*ce"
    assert set(s["latency"]["cpu"]) >= {"batch_1", "batch_8"}
    run = tmp_path / "run"
    for name in ("report.json", "report.md", "student/model.safetensors", "baseline/metrics.jsonl"):
        assert (run / name).exists(), name
    assert json.loads((run / "report.json").read_text())["models"]["student"]["quality"] == s["quality"]
    assert "KD student" in str(rep)  # printing the report shows the markdown table
    # the returned student is the trained one: its accuracy matches the report
    from leankd.train.loop import evaluate

    task = TensorTask({"train": train, "test": test}, num_classes=4)
    assert evaluate(result.student, task, "test")["accuracy"] == pytest.approx(s["quality"]["accuracy"])


def test_class_mismatch_is_caught_before_training(data, teacher):
    train, val, _ = data
    with pytest.raises(ModelError, match="predicts 5 classes but the data has 4"):
        leankd.distill(teacher, GRUClassifier(8, num_classes=5), train, val, epochs=1)


def test_bad_data_is_a_clear_error(teacher):
    with pytest.raises(DataError, match="train_data"):
        leankd.distill(teacher, GRUClassifier(8), [1, 2, 3], epochs=1)


def test_bad_settings_are_clear_errors(data, teacher):
    from leankd.errors import RecipeError

    train, val, _ = data
    with pytest.raises(RecipeError, match="precision = 'fp8'"):
        leankd.distill(teacher, GRUClassifier(8), train, val, precision="fp8")
    with pytest.raises(RecipeError, match="warmup_epochs"):
        leankd.distill(teacher, GRUClassifier(8), train, val, train={"warmup_epochs": -1})
