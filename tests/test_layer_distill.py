"""Layer distillation end to end: feature taps (hooks, names, compiled models), feature losses inside the training
loop (adapters trained, checkpointed, resumed), `pairs: auto` in a recipe, the logit-KD control and the per-term
cost table in the report, and `leankd layers`."""
import json

import pytest
import torch
from typer.testing import CliRunner

from leankd.cli import app
from leankd.kd.features import AttentionTransfer, Hint
from leankd.kd.losses import KD
from leankd.kd.taps import FeatureTaps, TapError, candidate_layers, resolve_module
from leankd.kd.teacher import LiveTeacher
from leankd.models import create_model
from leankd.recipe import TrainConfig
from leankd.tasks.base import TensorTask
from leankd.train.loop import fit
from leankd.train.step_cost import feature_costs

from test_pipeline import make_image_folder, write_recipe

runner = CliRunner()


# ------------------------------------------------------------------------------------------------ taps
def test_wrong_tap_name_lists_close_and_available_names():
    model = create_model("resnet8", num_classes=4)
    with pytest.raises(TapError) as e:
        resolve_module(model, "layer4", "student")
    msg = str(e.value)
    assert "student has no module named 'layer4'" in msg
    assert "Did you mean" in msg and "layer1" in msg and "Available:" in msg


def test_taps_capture_outputs_and_leave_no_hooks_behind():
    model = create_model("resnet8", num_classes=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with FeatureTaps(model, ["layer1", "layer3"]) as taps:
        logits = model(x)
        feats = taps.take()
        assert set(feats) == {"layer1", "layer3"} and feats["layer3"].shape[0] == 2
        assert taps.features == {}  # take() empties: a stale feature cannot be read twice
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), logits)


def test_taps_work_on_a_compiled_model():
    model = create_model("resnet8", num_classes=4).eval()
    compiled = torch.compile(model, backend="eager")  # dynamo tracing without inductor's compile time
    with FeatureTaps(compiled, ["layer2"]) as taps:
        compiled(torch.randn(2, 3, 16, 16))
        assert taps.take()["layer2"].shape[1] == model.layer2[0].conv1.out_channels


def test_candidate_layers_are_the_blocks():
    assert candidate_layers(create_model("resnet20", num_classes=10)) == [
        f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]


# ------------------------------------------------------------------------------------------------ loop
def _task(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return TensorTask({"train": (x, y), "val": (x[:16], y[:16])}, num_classes=4)


def _hint_run(tmp_path, stop_after_epoch=None, resume=False):
    torch.manual_seed(0)
    task = _task()
    teacher = LiveTeacher(create_model("resnet14", num_classes=4), task)
    student = create_model("resnet8", num_classes=4)
    loss = KD(4.0) + 1.0 * Hint([("layer2", "layer2")]) + 50.0 * AttentionTransfer([("layer3", "layer3")])
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    try:
        fit(student, task, cfg, loss=loss, teacher=teacher, checkpoint_path=tmp_path / "ckpt.safetensors",
            stop_after_epoch=stop_after_epoch, resume=resume)
    except InterruptedError:
        pass
    return student, loss


def test_feature_losses_train_adapters_and_resume_exactly(tmp_path, monkeypatch):
    built = {}
    original_build = Hint.build

    def spy(self, student_features, teacher_features):  # the adapter's weights right after build()
        original_build(self, student_features, teacher_features)
        built.update({k: v.detach().clone() for k, v in self.named_parameters()})

    monkeypatch.setattr(Hint, "build", spy)
    full, full_loss = _hint_run(tmp_path / "a")
    hint = [m for m in full_loss.losses if isinstance(m, Hint)][0]
    trained = dict(hint.named_parameters())
    assert built and set(built) == set(trained)
    # every adapter parameter moved: they were in the optimizer (BN statistics alone would not show here)
    assert all(not torch.allclose(built[k], trained[k]) for k in built)
    _hint_run(tmp_path / "b", stop_after_epoch=1)
    resumed, resumed_loss = _hint_run(tmp_path / "b", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    for a, b in zip(full_loss.parameters(), resumed_loss.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # the adapter was checkpointed and restored too
    assert not any("adapter" in k for k in full.state_dict())  # never part of the student
    assert all(not m._forward_hooks for m in full.modules())  # fit removed its hooks


def test_feature_cost_rows_price_each_term():
    task = _task()
    teacher = LiveTeacher(create_model("resnet14", num_classes=4), task)
    student = create_model("resnet8", num_classes=4)
    rows = feature_costs(student, KD(4.0), [1.0 * Hint([("layer2", "layer2")])], task, teacher, batch_size=16,
                         steps=2)
    assert [r["loss"] for r in rows][0] == "kd(T=4)" and "hint" in rows[1]["loss"]
    assert rows[0]["extra_ms_per_step"] == 0.0 and rows[1]["ms_per_step"] > 0
    # memory: a real tensor-byte peak, and adding a term can never lower it (the teacher's forward usually sets it)
    assert rows[0]["peak_mb"] > 0 and rows[1]["peak_mb"] >= rows[0]["peak_mb"] and rows[1]["extra_mb"] >= 0
    assert teacher.taps is None  # the measurement leaves the teacher as it found it


# ------------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.slow
def test_recipe_with_explicit_and_auto_pairs(tmp_path, data):
    recipe = write_recipe(tmp_path, data, distill={"alpha": 0.9, "features": [
        {"kind": "hint", "pairs": [["layer2", "layer2"]]},
        {"kind": "at", "weight": 100, "pairs": "auto", "top_k": 1, "candidates": {"teacher": ["layer?"]}}]})
    res = runner.invoke(app, ["run", str(recipe), "-q"])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "tiny"
    rep = json.loads((run_dir / "report.json").read_text())
    assert {"teacher", "baseline", "logit_kd", "student"} <= set(rep["models"])
    assert rep["models"]["logit_kd"]["training"]["loss"] == "0.9*kd(T=4) + 0.1*ce"
    student_loss = rep["models"]["student"]["training"]["loss"]
    assert "hint(layer2->layer2)" in student_loss and "at(" in student_loss
    costs = rep["models"]["student"]["training"]["feature_costs"]
    assert len(costs) == 3 and costs[0]["extra_ms_per_step"] == 0.0
    analysis = json.loads((run_dir / "layers-1.json").read_text())
    assert analysis["teacher_names"] == ["layer1", "layer2", "layer3"] and len(analysis["matching"]) == 1
    assert any("Layer distillation" in n and "logit-only KD" in n for n in rep["notes"])
    md = (run_dir / "report.md").read_text()
    assert "## Layer distillation: cost per step" in md
    from safetensors.torch import load_file
    assert not [k for k in load_file(str(run_dir / "student" / "model.safetensors")) if "adapter" in k]

    res = runner.invoke(app, ["layers", str(recipe), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "trained weights" in res.output and "Proposed pairs" in res.output
    assert len(json.loads((run_dir / "layers.json").read_text())["matching"]) == 2


def test_wrong_pair_name_fails_before_training(tmp_path, data):
    recipe = write_recipe(tmp_path, data, distill={"features": [{"kind": "hint", "pairs": [["layer2", "layer9"]]}]})
    res = runner.invoke(app, ["run", str(recipe), "-q", "--set", "teacher.train.epochs=1"])
    assert res.exit_code == 2
    assert "the teacher (resnet14) has no module named 'layer9'" in " ".join(res.output.split())
    assert "training" not in res.output  # found from the built models, before the teacher trains


def test_layers_command_without_a_run_says_weights_are_random(tmp_path, data):
    recipe = write_recipe(tmp_path, data)
    res = runner.invoke(app, ["layers", str(recipe)])
    assert res.exit_code == 0, res.output
    assert "randomly initialized" in res.output
    saved = json.loads((tmp_path / "runs" / "tiny" / "layers.json").read_text())
    assert len(saved["student_names"]) == 3 and len(saved["teacher_names"]) == 6


@pytest.mark.parametrize("source,name", [("torchvision", "features.3"), ("timm", "stages.1")])
def test_taps_work_on_torchvision_and_timm_models(source, name):
    if source == "torchvision":
        import torchvision
        model = torchvision.models.mobilenet_v2(num_classes=4)
    else:
        import timm
        model = timm.create_model("convnext_atto", num_classes=4)
    with FeatureTaps(model.eval(), [name]) as taps:
        model(torch.randn(1, 3, 64, 64))
        assert taps.take()[name].dim() == 4
    assert name in candidate_layers(model) or any(c.startswith(name + ".") for c in candidate_layers(model))


def test_python_api_distills_with_a_feature_loss(tmp_path):
    import leankd
    task_x = torch.randn(96, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    task_y = (task_x[:, 0].mean((1, 2)) > 0).long()
    teacher = create_model("resnet14", num_classes=2)
    result = leankd.distill(teacher, create_model("resnet8", num_classes=2), (task_x[:64], task_y[:64]),
                            (task_x[64:], task_y[64:]), epochs=1, batch_size=16, baseline=False,
                            loss=leankd.losses.KD(4) + 0.5 * leankd.losses.Hint([("layer3", "layer3")]),
                            measure={"latency_batch_sizes": [1], "latency_runs": 30, "latency_warmup": 1})
    assert "hint(layer3->layer3)" in result.report["models"]["student"]["training"]["loss"]
