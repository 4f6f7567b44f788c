"""Throughput switches (train/speed.py): large-batch lr scaling, CUDA graphs (the step path with graph-step marks,
exercised on CPU by planning for CUDA; refused on CPU with a note), the optimizer kernel path, the resident cache
view, and what the report says about them."""
import pytest
import torch

from leankd.kd.cache import CachedTeacher, build_or_load
from leankd.kd.teacher import LiveTeacher
from leankd.models import create_model
from leankd.recipe import TrainConfig
from leankd.train import allocator
from leankd.report.markdown import render_markdown
from leankd.report.schema import build_report
from leankd.train import loop, speed
from leankd.train.loop import fit

from test_report import _models, _run
from test_teacher_cache import _task as image_task
from test_train import make_task, mlp


@pytest.mark.parametrize("scaling, expected", [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_lr_scaling_sets_the_optimizers_lr(scaling, expected):
    cfg = TrainConfig(epochs=1, batch_size=512, lr=0.1, lr_scaling=scaling, lr_base_batch_size=128,
                      schedule="constant")
    assert cfg.effective_lr == pytest.approx(expected)
    task = make_task()
    result = fit(mlp(), task, cfg.model_copy(update=dict(batch_size=64, lr_base_batch_size=16)))
    assert result.history[0]["lr"] == pytest.approx(expected)  # 64 / 16 == 512 / 128
    assert any("scaling" in s for s in result.speedups) == (scaling != "none")


def test_cuda_graphs_on_cpu_are_reported_not_applied_and_change_nothing():
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    plain = fit(mlp(), make_task(), cfg, seed=1)
    asked = fit(mlp(), make_task(), cfg.model_copy(update=dict(cuda_graphs=True)), seed=1)
    assert [r["train_loss"] for r in asked.history] == [r["train_loss"] for r in plain.history]  # eager, no compile
    assert asked.speedups == ["foreach SGD"] + ([allocator.DESCRIPTION] if allocator.tune() else [])
    assert asked.speedup_notes == ["cuda_graphs: not applied, the run is on cpu (CUDA graphs need a CUDA device)"]


def test_the_cuda_graph_step_path_trains_like_eager(monkeypatch):
    """Plan as if on CUDA (torch.compile mode='reduce-overhead' + a graph-step mark per step), run on CPU where
    inductor compiles without graphs: the step path (marks, hits read before backward) must train like eager."""
    planned, outputs, marks = [], [], []

    def plan_for_cuda(model, cfg, device, reads_features=False):
        plan = speed.plan_step(model, cfg, torch.device("cuda"), reads_features=reads_features)
        planned.append((plan, plan.model is not model))
        compiled = plan.model

        def recording(x):  # keep every step's logits, to overwrite them as a replay would
            out = compiled(x)
            outputs.append(out)
            return out

        plan.model = recording
        return plan

    def replay_overwrites():  # what a CUDA-graph replay does to the previous step's outputs
        marks.append(1)
        if outputs:
            outputs[-1].data.fill_(float("nan"))

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # planning for CUDA turns it on; undone below
    monkeypatch.setattr(loop, "plan_step", plan_for_cuda)
    monkeypatch.setattr(loop, "mark_step_begin", replay_overwrites)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, cuda_graphs=True)
    graphed = fit(mlp(dropout=0.0), make_task(), cfg, seed=2)
    monkeypatch.undo()
    eager = fit(mlp(dropout=0.0), make_task(), cfg.model_copy(update=dict(cuda_graphs=False)), seed=2)
    assert planned[0][0].mark_steps and planned[0][1]  # graphs planned, the student compiled
    assert len(marks) == 2 * make_task().steps_per_epoch(32)  # one mark per training step
    # on CPU inductor records no graph (CPU tensors); the report must say so rather than claim CUDA graphs
    assert "torch.compile" in graphed.speedups and speed.GRAPHS not in graphed.speedups
    assert any("declined to record" in note for note in graphed.speedup_notes)
    for g, e in zip(graphed.history, eager.history):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert g["train_accuracy"] == pytest.approx(e["train_accuracy"], abs=1 / 320 + 1e-9)
        assert g["val_accuracy"] == pytest.approx(e["val_accuracy"], abs=1 / 96 + 1e-9)


def test_feature_losses_get_compile_without_cuda_graphs(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    model = mlp()
    cfg = TrainConfig(cuda_graphs=True)
    plan = speed.plan_step(model, cfg, torch.device("cuda"), reads_features=True)
    assert not plan.mark_steps and plan.model is not model  # compiled, default mode
    assert plan.applied == ["cuDNN autotuning", "torch.compile"] and torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    deterministic = speed.plan_step(model, cfg.model_copy(update=dict(deterministic=True)), torch.device("cuda"))
    assert "cuDNN autotuning" not in deterministic.applied and not torch.backends.cudnn.benchmark
    assert "feature losses" in plan.skipped[0]
    cpu = speed.plan_step(model, cfg, torch.device("cpu"))
    assert cpu.model is model and cpu.applied == []  # on CPU cuda_graphs does not imply compile


def test_optimizer_kernel_path_follows_the_device():
    from leankd.train.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    for name in ("sgd", "adamw"):
        cfg = TrainConfig(optimizer=name, batch_size=256, lr_scaling="linear")
        on_cuda = build_optimizer(params, cfg, torch.device("cuda"))  # fused kernels also run on CPU tensors
        assert speed.describe_optimizer(on_cuda) == f"fused {type(on_cuda).__name__}"
        assert on_cuda.param_groups[0]["lr"] == pytest.approx(2 * cfg.lr)  # effective_lr
        compiled = build_optimizer(params, cfg.model_copy(update=dict(cuda_graphs=True)), torch.device("cuda"))
        assert speed.describe_optimizer(compiled).startswith("foreach")
        assert speed.describe_optimizer(build_optimizer(params, cfg, torch.device("cpu"))).startswith("foreach")
    assert speed.describe_optimizer(torch.optim.SGD(params, lr=0.1)) == "per-tensor SGD"


def test_teacher_side_switches_are_listed(tmp_path):
    task = image_task()
    live = LiveTeacher(create_model("resnet8", num_classes=3), task, precision="bf16")
    assert live.speedups == ["teacher held in bf16"]
    cached, _ = build_or_load(tmp_path, "fp", LiveTeacher(create_model("resnet8", num_classes=3), task), task,
                              views=2, seed=0)
    assert cached.speedups == ["teacher logits from the cache (2 views)"]


def test_resident_view_gives_the_stored_rows(tmp_path):
    """A view small enough is copied to the device whole; a larger one is read from the memory map per batch.
    Both must hand the loop the same logits, and switching views must not keep serving the old one."""
    task = image_task()
    torch.manual_seed(0)
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    resident, _ = build_or_load(tmp_path, "fp", live, task, views=2, seed=0)
    mapped, _ = build_or_load(tmp_path, "fp", live, task, views=2, seed=0)
    mapped.RESIDENT_BYTES = 0
    assert CachedTeacher.RESIDENT_BYTES > 0
    for view in (0, 1, 0):
        resident.view = mapped.view = view
        batch = next(task.train_batches(0, 16, seed=0, view=view))
        a, b = resident(batch), mapped(batch)
        assert torch.equal(a, b) and a.dtype == torch.float32
        assert torch.allclose(a, live(batch), atol=2e-2, rtol=1e-3)
    assert resident._resident is not None and mapped._resident is None


def test_resident_top_k_view_and_the_size_threshold(tmp_path):
    task = image_task()
    torch.manual_seed(0)
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    a, _ = build_or_load(tmp_path, "k", live, task, views=1, seed=0, top_k=2)
    b, _ = build_or_load(tmp_path, "k", live, task, views=1, seed=0, top_k=2)
    stored = 80 * (2 * 2 + 1) * 4  # held unpacked: the fp32 rows of compress_top_k (4 + 12 bytes per row on disk)
    assert a.resident_nbytes == stored and a.logits[0].nbytes == 80 * 12
    a.RESIDENT_BYTES, b.RESIDENT_BYTES = stored, stored - 1
    batch = next(task.train_batches(0, 16, seed=0, view=0))
    assert torch.equal(a(batch).rows, b(batch).rows) and a(batch).shape == (16, 3)
    assert a._resident is not None and b._resident is None
    c, _ = build_or_load(tmp_path / "f", "h", live, task, views=1, seed=0)  # fp16 rows take twice their size
    c.RESIDENT_BYTES = 2 * c.logits[0].nbytes - 1
    c(batch)
    assert c._resident is None


def test_report_lists_speedups_and_unapplied_switches():
    models = _models()
    models["student"]["training"].update(
        speedups=["bf16 autocast (loss in fp32)", "fused SGD", "teacher logits from the cache (8 views)"],
        speedup_notes=["cuda_graphs: not applied, the run is on cpu (CUDA graphs need a CUDA device)"])
    models["baseline"]["training"].update(speedups=["foreach SGD"])
    md = render_markdown(build_report(_run(), models, []))
    section = md.split("## Training speed-ups")[1].split("##")[0]
    assert "- KD student: bf16 autocast (loss in fp32), fused SGD, teacher logits from the cache (8 views); " \
           "cuda_graphs: not applied" in section
    assert "- Baseline student: foreach SGD" in section
    assert "Teacher" not in section  # no training block, no line


def test_cpu_training_keeps_freed_memory_in_glibc_and_says_so(monkeypatch):
    """mallopt's thresholds are in effect on glibc (what FIELD-NOTES measured), listed among the stage's speed-ups, and
    LEANKD_MALLOC_TUNING=0 keeps a process on glibc's defaults."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert allocator.tune() is True
    result = fit(mlp(), make_task(), TrainConfig(epochs=1, batch_size=32, lr=0.05))
    assert allocator.DESCRIPTION in result.speedups
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("LEANKD_MALLOC_TUNING", "0")
    assert allocator.tune() is False


def test_a_conv_student_without_channels_last_is_told_of_the_switch():
    """The layout is left as the recipe says (it is part of the stage), but a conv model trained without it gets a
    line among the unapplied switches; a model without 2-D convolutions, or one already in channels_last, does not."""
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1)
    conv = speed.plan_step(create_model("resnet8", num_classes=3), cfg, torch.device("cpu"))
    assert any(s.startswith("channels_last: off") and "train.channels_last: true" in s for s in conv.skipped)
    assert not any("channels_last" in s for s in speed.plan_step(mlp(), cfg, torch.device("cpu")).skipped)
    on = speed.plan_step(create_model("resnet8", num_classes=3), cfg.model_copy(update=dict(channels_last=True)),
                         torch.device("cpu"))
    assert "channels_last" in on.applied and not any("channels_last" in s for s in on.skipped)
