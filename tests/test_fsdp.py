"""FSDP2 (`train.fsdp: true`, `fully_shard`) on 2 CPU processes (gloo): the student and the live teacher sharded per
transformer block, against DDP on the same 2 processes and against one process on the same global batch.

One spawned 2-rank job runs every scenario through `fit` (processes cost seconds to start on a 2-core machine) and
saves what rank 0 ends with; one process runs the same in this process. A last test runs the whole pipeline through
the command line (`--nproc 2 --set train.fsdp=true`): rank 0 measures and reports on the gathered weights.

Tolerance: the ranks' gradients are averaged by a reduce-scatter (FSDP) or an all-reduce (DDP) instead of being
computed over the whole batch at once, so sums run in another order: a last-bit difference (~1e-7 relative) per
step, which 12 SGD steps keep at that order; the tolerance (1e-5 absolute + 1e-4 relative) is the one
tests/test_distributed.py uses for DDP against one process. A wrong gradient scale (a sum where an average belongs:
2x) moves the weights by a whole step's size, which `test_a_sum_instead_of_an_average_would_be_caught` shows lands
outside it.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from torch import nn

from leankd.core import dist
from leankd.kd.features import HiddenStateMSE
from leankd.kd.losses import KD
from leankd.kd.teacher import LiveTeacher
from leankd.recipe import TrainConfig
from leankd.tasks.base import TensorTask
from leankd.train.loop import ProgressHook, fit

pytest.importorskip("transformers")
from leankd.models.lm import gpt  # noqa: E402

VOCAB, CONTEXT = 12, 8
# SGD, not AdamW: AdamW's step barely changes when every gradient doubles, so only SGD's weights show a wrong
# average. grad_clip far above the gradient norm: clipping by DTensor norms runs, and never rescales a step.
CFG = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, weight_decay=5e-4, grad_clip=100.0)


class LastToken(nn.Module):
    """A causal LM scored on its last position's next token: a classifier over the vocabulary, so a plain
    TensorTask trains it (the blocks are Hugging Face GPTBigCode blocks, what FSDP shards one by one)."""

    def __init__(self, layers: int, hidden: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.lm = gpt(num_classes=VOCAB, context=CONTEXT, layers=layers, hidden=hidden, heads=2)

    def forward(self, x):
        return self.lm(x)[:, -1]


def _kd():
    return KD(temperature=2.0)


def _split(n: int, seed: int):
    x = torch.randint(0, VOCAB, (n, CONTEXT), generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0] + x[:, -1]) % VOCAB


def _task():
    return TensorTask({"train": _split(96, 0), "val": _split(32, 1)}, num_classes=VOCAB)


class TeacherProbe(ProgressHook):
    """Looks at the teacher's parameters while the student trains (rank 0 gets the progress hook)."""

    def __init__(self, teacher: LiveTeacher):
        self.teacher, self.seen = teacher, []

    def start_epoch(self, epoch, epochs, steps):
        from torch.distributed.tensor import DTensor

        self.seen.append([(type(p).__name__, p.to_local().numel() if isinstance(p, DTensor) else p.numel(), p.numel())
                          for p in self.teacher.model.parameters()])


def _plain(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return not any(isinstance(p, DTensor) for p in model.parameters()) and not any(
        "FSDP" in type(m).__name__ for m in model.modules())


def scenarios(out: Path) -> None:
    """Every training this file checks, the same way in one process and on each of 2 ranks; rank 0 (or the single
    process) saves the final weights, losses and observations under `out`."""
    out.mkdir(parents=True, exist_ok=True)

    def save(name, model, result, **extra):
        if dist.is_main():
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{name}.pt")
            (out / f"{name}.json").write_text(json.dumps({
                "train": [r["train_loss"] for r in result.history], "val": [r["val_loss"] for r in result.history],
                "speedups": result.speedups, "skipped": result.speedup_notes, "plain": _plain(model), **extra}))

    task = _task()
    for name, cfg in (("ddp", CFG), ("fsdp", CFG.model_copy(update={"fsdp": True}))):
        teacher_model = LastToken(2, 24, seed=5)
        before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
        teacher = LiveTeacher(teacher_model, task)
        probe = TeacherProbe(teacher)
        m = LastToken(2, 16, seed=0)
        result = fit(m, task, cfg, loss=_kd(), teacher=teacher, progress=probe,
                     checkpoint_path=out / f"{name}_ckpt.safetensors")
        after = teacher.model.state_dict()
        save(name, m, result, teacher_seen=probe.seen, teacher_plain=_plain(teacher.model),
             teacher_unchanged=all(torch.equal(before[k], after[k]) for k in before))
        if dist.is_main() and dist.world_size() > 1:  # the gathered weights run on rank 0 alone, no collectives
            with dist.alone():
                m.load_state_dict(m.state_dict())  # no FSDP hook left on the modules either
                (out / f"{name}_alone.json").write_text(json.dumps(m(task.splits["val"][0][:4]).tolist()))
    # two micro-batches per process: FSDP adds the reduce-scattered gradients of both into the shards
    m = LastToken(2, 16, seed=0)
    save("accumulate", m, fit(m, task, CFG.model_copy(update={"fsdp": True, "accumulate": 2}), loss=_kd(),
                              teacher=LiveTeacher(LastToken(2, 24, 5), task)))
    # a feature loss with trained adapters (plain parameters, averaged by hand beside the sharded student) and a
    # clipping threshold low enough to clip every step: one norm over both kinds of parameters
    loss = _kd() + HiddenStateMSE([("lm.hf.transformer.h.1", "lm.hf.transformer.h.1")])
    m = LastToken(2, 16, seed=0)
    result = fit(m, task, CFG.model_copy(update={"fsdp": True, "grad_clip": 0.05}), loss=loss,
                 teacher=LiveTeacher(LastToken(2, 24, 5), task))
    if dist.is_main():
        torch.save({k: v.detach().clone() for k, v in loss.state_dict().items()}, out / "adapters_loss.pt")
    save("adapters", m, result)
    # killed after epoch 1 (every rank alike), then resumed from the checkpoint under FSDP
    cfg = CFG.model_copy(update={"fsdp": True})
    try:
        fit(LastToken(2, 16, seed=0), task, cfg, loss=_kd(), teacher=LiveTeacher(LastToken(2, 24, 5), task),
            checkpoint_path=out / "resumed_ckpt.safetensors", stop_after_epoch=1)
    except InterruptedError:
        pass
    m = LastToken(2, 16, seed=0)
    result = fit(m, task, cfg, loss=_kd(), teacher=LiveTeacher(LastToken(2, 24, 5), task),
                 checkpoint_path=out / "resumed_ckpt.safetensors", resume=True)
    save("resumed", m, result, resumed_from=result.resumed_from_epoch)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        scenarios(Path(out))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one process, two processes): the directories their scenarios wrote."""
    root = tmp_path_factory.mktemp("fsdp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scenarios(root / "one")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, str(root / "store"), str(root / "two")), nprocs=2, join=True)
    return root / "one", root / "two"


def _close(a: dict, b: dict, atol=1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4) for k in a)


def _read(d: Path, name: str) -> tuple[dict, dict]:
    return torch.load(d / f"{name}.pt"), json.loads((d / f"{name}.json").read_text())


def test_fsdp_trains_what_ddp_and_one_process_train(runs):
    one, two = runs
    fsdp_w, fsdp_r = _read(two, "fsdp")
    ddp_w, ddp_r = _read(two, "ddp")
    one_w, one_r = _read(one, "ddp")
    assert _close(fsdp_w, ddp_w) and _close(fsdp_w, one_w)
    for other in (ddp_r, one_r):
        assert fsdp_r["train"] == pytest.approx(other["train"], rel=1e-5)
        assert fsdp_r["val"] == pytest.approx(other["val"], rel=1e-5)
    assert fsdp_r["train"][-1] < fsdp_r["train"][0]  # it learned something: the comparison is not of two no-ops
    assert _close(_read(two, "accumulate")[0], one_w)  # and with gradient accumulation on each process


def test_a_sum_instead_of_an_average_would_be_caught(runs, monkeypatch):
    """The control: the same training with every gradient doubled (ranks summed instead of averaged) lands outside
    the tolerance."""
    import leankd.train.loop as loop

    one, _ = runs
    one_w, _ = _read(one, "ddp")
    monkeypatch.setattr(loop, "_weight", lambda micro, batch, world, micro_batches: 2.0)
    task = _task()
    m = LastToken(2, 16, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(m, task, CFG, loss=_kd(), teacher=LiveTeacher(LastToken(2, 24, 5), task))
    finally:
        torch.set_num_threads(threads)
    assert not _close(m.state_dict(), one_w)


def test_the_teacher_and_the_student_are_sharded_while_training_and_whole_afterwards(runs):
    one, two = runs
    _, fsdp_r = _read(two, "fsdp")
    assert any("FSDP2 (fully_shard) over 2 processes (gloo): student in 2 blocks + root, teacher sharded" in s
               for s in fsdp_r["speedups"]), fsdp_r["speedups"]
    for epoch in fsdp_r["teacher_seen"]:  # every teacher parameter a DTensor holding half of the rows here
        assert {kind for kind, _, _ in epoch} == {"DTensor"}
        assert sum(local for _, local, _ in epoch) < 0.6 * sum(full for _, _, full in epoch)
    assert fsdp_r["plain"] and fsdp_r["teacher_plain"] and fsdp_r["teacher_unchanged"]
    _, ddp_r = _read(two, "ddp")
    assert {kind for epoch in ddp_r["teacher_seen"] for kind, _, _ in epoch} == {"Parameter"}  # DDP: whole
    assert not any("FSDP" in s for s in ddp_r["speedups"])
    # rank 0 alone runs the gathered model (as the pipeline measures it afterwards): DDP's weights, same outputs
    alone = [torch.tensor(json.loads((two / f"{name}_alone.json").read_text())) for name in ("fsdp", "ddp")]
    assert alone[0].shape == (4, VOCAB) and torch.allclose(alone[0], alone[1], atol=1e-4)


def test_trained_loss_parts_are_averaged_beside_the_sharded_student_and_clipped_with_it(runs):
    one, two = runs
    assert _close(_read(two, "adapters")[0], _read(one, "adapters")[0])
    a, b = torch.load(two / "adapters_loss.pt"), torch.load(one / "adapters_loss.pt")
    assert a and _close(a, b)
    assert not _close(_read(one, "adapters")[0], _read(one, "fsdp")[0])  # the feature loss and the clip did act


def test_one_process_with_fsdp_trains_plainly_with_a_note(runs):
    one, _ = runs
    fsdp_w, fsdp_r = _read(one, "fsdp")
    ddp_w, _ = _read(one, "ddp")
    assert all(torch.equal(fsdp_w[k], ddp_w[k]) for k in ddp_w)  # exactly the plain run
    assert fsdp_r["skipped"] == ["fsdp: one process, nothing to shard: trained as a plain one-process run"]


def test_a_checkpoint_written_under_fsdp_is_the_one_a_single_process_writes(runs):
    one, two = runs
    a, b = load_file(two / "fsdp_ckpt.safetensors"), load_file(one / "ddp_ckpt.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert _close({k: v for k, v in a.items() if not k.endswith(".step")},
                  {k: v for k, v in b.items() if not k.endswith(".step")}, atol=1e-4)
    from leankd.train.checkpoint import load_checkpoint
    from leankd.train.optim import build_optimizer, param_groups

    m = LastToken(2, 16, seed=1)  # one process loads it: weights and optimizer state
    opt = build_optimizer(param_groups(m, CFG.weight_decay), CFG, torch.device("cpu"))
    state = load_checkpoint(two / "fsdp_ckpt.safetensors", m, opt, None, None)
    assert state["epoch"] == 2 and state["world_size"] == 2
    assert _close(m.state_dict(), torch.load(two / "fsdp.pt"), atol=0)


def test_killed_and_resumed_under_fsdp_ends_where_the_uninterrupted_run_ends(runs):
    _, two = runs
    resumed_w, resumed_r = _read(two, "resumed")
    fsdp_w, fsdp_r = _read(two, "fsdp")
    assert resumed_r["resumed_from"] == 1
    assert all(torch.equal(resumed_w[k], fsdp_w[k]) for k in fsdp_w)
    assert resumed_r["train"] == fsdp_r["train"] and resumed_r["val"] == fsdp_r["val"]


# ----------------------------------------------------------------------------------------------- the command line
def test_a_causal_lm_run_under_fsdp_reports_from_the_gathered_weights(tmp_path):
    """The whole pipeline, 2 processes, live teacher: the stage records say FSDP, rank 0 measures and reports, and
    model.safetensors has a one-process model's keys and shapes (it loads strictly into one)."""
    import subprocess
    import sys

    from test_causal_lm_run import corpus

    (tmp_path / "corpus.txt").write_text(corpus(200))
    recipe = {
        "name": "lm_fsdp", "device": "cpu",
        "data": {"task": "causal_lm", "source": str(tmp_path / "corpus.txt"), "val_fraction": 0.1,
                 "lm": {"context": 16, "test_fraction": 0.05}},
        "teacher": {"model": "gpt", "kwargs": {"layers": 2, "hidden": 32, "heads": 2}},
        "student": {"model": "gpt", "kwargs": {"layers": 2, "hidden": 16, "heads": 2}},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.01, "fsdp": True},
        "distill": {"loss": [{"kind": "forward_kl", "weight": 0.5}, {"kind": "ce", "weight": 0.5}]},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "leankd", "run", str(path), "--run-dir", str(run_dir), "--nproc", "2",
                          "-q"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    speedups = json.loads((run_dir / "student" / "stage.json").read_text())["training"]["speedups"]
    assert any(s.startswith("FSDP2 (fully_shard) over 2 processes (gloo): student in 2 blocks + root, teacher "
                            "sharded") for s in speedups), speedups
    teacher = json.loads((run_dir / "teacher" / "stage.json").read_text())["training"]["speedups"]
    assert any("FSDP2" in s and "teacher sharded" not in s for s in teacher), teacher  # no teacher to shard there
    report = json.loads((run_dir / "report.json").read_text())
    assert report["models"]["student"]["quality"]["loss"] > 0
    weights = load_file(run_dir / "student" / "model.safetensors")
    vocab = report["run"]["dataset"]["vocab_size"]
    fresh = gpt(num_classes=vocab, context=16, layers=2, hidden=16, heads=2)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(weights, strict=True)
