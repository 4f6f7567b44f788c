"""The training loop: determinism, resume == uninterrupted, atomic checkpoints, precisions, schedules."""
import pytest
import torch
from torch import nn

from leankd.kd.losses import mix
from leankd.kd.teacher import LiveTeacher
from leankd.recipe import TrainConfig
from leankd.tasks.base import TensorTask
from leankd.train import checkpoint as ckpt_mod
from leankd.train.checkpoint import load_checkpoint, save_checkpoint
from leankd.train.loop import evaluate, fit
from leankd.train.optim import build_optimizer, build_scheduler, lr_factor


def blobs(n=320, classes=4, dim=8, seed=0):
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(42)) * 1.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, dim, generator=g)
    return x, y


def make_task():
    x, y = blobs()
    xv, yv = blobs(96, seed=1)
    # additive noise as "augmentation" so the generator matters
    return TensorTask({"train": (x, y), "val": (xv, yv)}, num_classes=4,
                      transform=lambda b, g, train: b + (0.1 * torch.randn(b.shape, generator=g) if train else 0))


def mlp(seed=0, hidden=32, dropout=0.1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 4))


CFG = TrainConfig(epochs=4, batch_size=32, lr=0.05, schedule="cosine", warmup_epochs=0.5)


def test_same_seed_same_metrics():
    a = fit(mlp(), make_task(), CFG, seed=3)
    b = fit(mlp(), make_task(), CFG, seed=3)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["val_accuracy"] for r in a.history] == [r["val_accuracy"] for r in b.history]
    c = fit(mlp(), make_task(), CFG, seed=4)
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


def test_training_learns():
    task = make_task()
    model = mlp()
    before = evaluate(model, task, "val")["accuracy"]
    result = fit(model, task, CFG)
    after = evaluate(model, task, "val")["accuracy"]
    assert after > 0.8 and after > before
    assert result.history[-1]["val_accuracy"] == pytest.approx(after)
    assert len(result.history) == 4 and result.samples_per_s > 0


@pytest.mark.parametrize("with_teacher", [False, True])
def test_resume_equals_uninterrupted(tmp_path, with_teacher):
    task = make_task()
    kwargs = {}
    if with_teacher:
        t_model = mlp(seed=9, hidden=64)
        fit(t_model, task, CFG)
        kwargs = dict(loss=mix(0.9, 4.0), teacher=LiveTeacher(t_model, task))
    full = mlp()
    full_result = fit(full, task, CFG, seed=1, checkpoint_path=tmp_path / "a.safetensors", **kwargs)

    part = mlp()
    ck = tmp_path / "b.safetensors"
    with pytest.raises(InterruptedError):
        fit(part, task, CFG, seed=1, checkpoint_path=ck, metrics_path=tmp_path / "m.jsonl", stop_after_epoch=2, **kwargs)
    resumed_model = mlp(seed=123)  # a fresh process would build the model anew: different init, restored from disk
    resumed = fit(resumed_model, task, CFG, seed=1, checkpoint_path=ck, metrics_path=tmp_path / "m.jsonl",
                  resume=True, **kwargs)
    assert resumed.resumed_from_epoch == 2
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full_result.history]
    assert [r["val_accuracy"] for r in resumed.history] == [r["val_accuracy"] for r in full_result.history]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = mlp()
    opt = build_optimizer(model.parameters(), CFG, torch.device("cpu"))
    sched = build_scheduler(opt, CFG, 10)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, opt, sched, None, {"epoch": 1})
    original = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, opt, sched, None, {"epoch": 2})
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp file left behind
    monkeypatch.undo()
    assert load_checkpoint(path, mlp(), opt, sched, None) == {"epoch": 1}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from leankd.errors import LeanKDError

    path = tmp_path / "ck.safetensors"
    path.write_bytes(b"garbage")
    model = mlp()
    opt = build_optimizer(model.parameters(), CFG, torch.device("cpu"))
    with pytest.raises(LeanKDError, match="cannot be read"):
        load_checkpoint(path, model, opt, None, None)


def test_adamw_checkpoint_round_trip(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=1e-3)
    task = make_task()
    a = fit(mlp(), task, cfg.model_copy(update={"epochs": 2}), checkpoint_path=tmp_path / "x.safetensors")
    with pytest.raises(InterruptedError):
        fit(mlp(), task, cfg, checkpoint_path=tmp_path / "y.safetensors", stop_after_epoch=1)
    b = fit(mlp(), task, cfg, checkpoint_path=tmp_path / "y.safetensors", resume=True)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_runs(precision):
    task = make_task()
    model = mlp()
    result = fit(model, task, CFG.model_copy(update={"precision": precision}))
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    assert evaluate(model, task, "val")["accuracy"] > 0.6
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_schedules():
    steps = 100
    cos = TrainConfig(schedule="cosine", epochs=10, warmup_epochs=1)
    assert lr_factor(cos, 0, steps, 10) == pytest.approx(0.1)
    assert lr_factor(cos, 9, steps, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 99, steps, 10) < 0.01
    ms = TrainConfig(schedule="multistep", epochs=10, milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_factor(ms, s, steps, 10) for s in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    oc = TrainConfig(schedule="onecycle", epochs=10)
    assert lr_factor(oc, 0, steps, 10) < 0.1 and lr_factor(oc, 29, steps, 10) == pytest.approx(1.0)
    assert lr_factor(oc, 99, steps, 10) < 1e-3


def test_teacher_is_frozen_and_in_eval():
    task = make_task()
    t = mlp(dropout=0.5)
    t.train()
    live = LiveTeacher(t, task, "bf16")
    batch = next(task.train_batches(0, 32, 0))
    out1, out2 = live(batch), live(batch)
    assert torch.equal(out1, out2)  # dropout off
    assert out1.dtype == torch.float32 and not any(p.requires_grad for p in t.parameters())


def test_resumed_optimizer_state_keeps_the_parameter_layout(tmp_path):
    """channels_last params + AdamW: restored moment buffers must share the param's strides (fused CUDA kernels
    reject mixed layouts)."""
    def build():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).to(memory_format=torch.channels_last)
        cfg = TrainConfig(optimizer="adamw", lr=1e-3)
        return m, build_optimizer(m.parameters(), cfg, torch.device("cpu"))

    model, opt = build()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, None, None, {"epoch": 1})
    model2, opt2 = build()
    load_checkpoint(tmp_path / "c.safetensors", model2, opt2, None, None)
    conv_w = model2[0].weight
    assert conv_w.stride() != conv_w.contiguous().stride()  # really channels_last
    assert opt2.state[conv_w]["exp_avg"].stride() == conv_w.stride()
    assert torch.equal(opt2.state[conv_w]["exp_avg"], opt.state[model[0].weight]["exp_avg"])


def test_the_loop_hands_losses_their_progress_step_by_step():
    """A loss's warm-up reads `LossInputs.progress`: fractional epochs done after each step (320 examples at batch
    32: 10 steps an epoch, so 0.1, 0.2, ... 4.0), with `epoch` counted from 1 — a warm-up under one epoch ramps."""
    from leankd.kd.losses import CE

    class Recording(CE):
        def __init__(self):
            super().__init__()
            self.seen = []

        def compute(self, inputs):
            self.seen.append((inputs.epoch, inputs.epochs, inputs.progress))
            return super().compute(inputs)

    loss = Recording()
    fit(mlp(), make_task(), CFG, loss=loss)
    assert len(loss.seen) == 40
    assert [e for e, _, _ in loss.seen] == [1 + i // 10 for i in range(40)] and {n for _, n, _ in loss.seen} == {4}
    assert [p for _, _, p in loss.seen] == pytest.approx([(i + 1) / 10 for i in range(40)])
