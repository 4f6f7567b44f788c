"""Progressive distillation: teacher-assistant chains (TAKD) and densely guided students (DGKD) as ordinary
stages - the dense guide's gradient against the mean of per-guide KD losses by hand, the stages a recipe makes,
reuse on a rerun, and recipe errors."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from leankd.cli import app
from leankd.kd.losses import KD, LossInputs
from leankd.kd.teacher import GuideEnsemble
from leankd.recipe import parse_recipe
from leankd.tasks.base import Batch

from test_pipeline import make_image_folder

runner = CliRunner()


class _Fixed:
    """A guide that returns fixed logits (stands in for a LiveTeacher)."""

    def __init__(self, logits, task=None):
        self.logits, self.task = logits, task
        self.model = torch.nn.Linear(1, 1)
        self.speedups = []

    def __call__(self, batch):
        return self.logits


def test_dense_guides_give_the_gradient_of_the_mean_kd_loss():
    torch.manual_seed(0)
    guides = [torch.randn(5, 7) * 3 for _ in range(3)]
    student = torch.randn(5, 7, requires_grad=True)
    t = 2.5
    kd = KD(t)
    mean_loss = sum(kd.compute(LossInputs(student=student, targets=None, teacher=g)) for g in guides) / 3
    expected = torch.autograd.grad(mean_loss, student)[0]
    ensemble = GuideEnsemble([_Fixed(g) for g in guides], temperature=t)(Batch(None, torch.zeros(5)))
    got = torch.autograd.grad(kd.compute(LossInputs(student=student, targets=None, teacher=ensemble)), student)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # a single guide is that guide
    one = GuideEnsemble([_Fixed(guides[0])], temperature=t)(Batch(None, torch.zeros(5)))
    torch.testing.assert_close(torch.softmax(one / t, -1), torch.softmax(guides[0] / t, -1))


def test_assistant_recipe_errors():
    base = {"teacher": {"model": "resnet20"}, "student": {"model": "resnet8"}}
    r = parse_recipe({**base, "distill": {"assistants": ["resnet14", {"model": "cifar_resnet",
                                                                      "kwargs": {"depth": 8, "width": 12}}]}})
    assert [a.model for a in r.distill.assistants] == ["resnet14", "cifar_resnet"]
    with pytest.raises(Exception, match="teacher.cache with distill.assistants"):
        parse_recipe({**base, "teacher": {"model": "resnet20", "cache": True}, "distill": {"assistants": ["resnet14"]}})
    with pytest.raises(Exception, match="distill.assistants with distill.features"):
        parse_recipe({**base, "distill": {"assistants": ["resnet14"],
                                          "features": [{"kind": "at", "pairs": [["layer1", "layer1"]]}]}})
    with pytest.raises(Exception, match="assistant_mode"):
        parse_recipe({**base, "distill": {"assistants": ["resnet14"], "assistant_mode": "ring"}})


@pytest.mark.parametrize("mode", ["chain", "dense"])
def test_assistant_chain_runs_as_cached_stages(tmp_path, mode):
    data = make_image_folder(tmp_path / "images", per_class=(10, 4), size=12)
    recipe = {"name": "ta", "output_dir": str(tmp_path / "runs"),
              "data": {"source": str(data), "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache")},
              "teacher": {"model": "resnet14", "train": {"epochs": 1}}, "student": {"model": "resnet8"},
              "train": {"epochs": 1, "batch_size": 16, "lr": 0.05},
              "distill": {"assistants": [{"model": "cifar_resnet", "kwargs": {"depth": 14, "width": 12}}],
                          "assistant_mode": mode},
              "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run", str(path), "--run-dir", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "report.json").read_text())
    assert list(report["models"]) == ["teacher", "baseline", "assistant1", "student"]
    assistant = report["models"]["assistant1"]
    assert assistant["architecture"] == "cifar_resnet" and assistant["label"] == "Assistant 1 (cifar_resnet)"
    assert report["models"]["teacher"]["cost"]["macs"] > assistant["cost"]["macs"] > \
        report["models"]["student"]["cost"]["macs"]
    student_fp = json.loads((run_dir / "student" / "stage.json").read_text())["fingerprint"]
    assistant_fp = json.loads((run_dir / "assistant1" / "stage.json").read_text())["fingerprint"]
    # a rerun reuses every stage
    again = runner.invoke(app, ["run", str(path), "--run-dir", str(run_dir)])
    assert again.exit_code == 0 and "assistant1: reusing" in again.output and "student: reusing" in again.output
    # without the assistant the student is another stage (it learned from someone else)
    recipe["distill"] = {}
    path.write_text(yaml.safe_dump(recipe))
    plain = runner.invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "plain"), "--quiet"])
    assert plain.exit_code == 0
    assert json.loads((tmp_path / "plain" / "student" / "stage.json").read_text())["fingerprint"] != student_fp
    del assistant_fp
