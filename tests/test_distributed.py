"""Data-parallel training on 2 CPU processes (gloo), against one process on the same global batch.

One spawned 2-rank job runs every scenario (processes cost seconds to start on a 2-core machine) and saves what rank 0
ends with; the tests compare it with the same training in this process, one thread each, so the arithmetic differs
only by how the ranks' gradients are summed."""
import contextlib
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from leankd.compress.targets import BuildContext, Finetune
from leankd.compress.qat_guard import DivergenceWatch, QATDiverged, StartPoint
from leankd.compress.targets.qat_finetune import qat_finetune
from leankd.core import dist
from leankd.errors import RecipeError
from leankd.kd.cache import build_or_load
from leankd.kd.features import Hint
from leankd.kd.losses import KD, WeightedSum
from leankd.kd.teacher import LiveTeacher
from leankd.recipe import TrainConfig
from leankd.tasks.base import TensorTask
from leankd.train.loop import fit

CFG = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="cosine", weight_decay=5e-4)


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(9))[y] + torch.randn(n, 1, 6, 6, generator=g)
    return x, y


def _task():
    x, y = _data()
    xv, yv = _data(32, seed=1)
    # noise as augmentation: the generator (seeded from seed and epoch) matters, as it does for crops and flips
    return TensorTask({"train": (x, y), "val": (xv, yv)}, num_classes=3,
                      transform=lambda b, g, train: b + (0.1 * torch.randn(b.shape, generator=g) if train else 0))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 3))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _mlp_dropout():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, 3))


def _teacher_model():
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))


def scenarios(out: Path) -> None:
    """Every training this file checks, run the same way in one process and on each of 2 ranks; rank 0 (or the
    single process) saves the final weights and losses under `out`."""
    out.mkdir(parents=True, exist_ok=True)

    def save(name, model, result=None):
        if dist.is_main():
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{name}.pt")
            if result is not None:
                (out / f"{name}.json").write_text(json.dumps([r["train_loss"] for r in result.history]))

    m = _mlp()
    save("mlp", m, fit(m, _task(), CFG))
    m = _mlp()
    save("mlp_accumulate", m, fit(m, _task(), CFG.model_copy(update={"accumulate": 2})))
    m = _cnn()
    save("cnn_sync_bn", m, fit(m, _task(), CFG.model_copy(update={"sync_bn": True})))
    m = _cnn()
    save("cnn", m, fit(m, _task(), CFG))
    task = _task()
    teacher = LiveTeacher(_teacher_model(), task)
    m = _mlp()
    save("kd", m, fit(m, task, CFG, loss=KD(temperature=4.0), teacher=teacher))
    cached, _ = build_or_load(out / "cache", "fp", teacher, task, views=2, seed=0, batch_size=16, log=lambda s: None)
    build_or_load(out / "cache_top_k", "fp", teacher, task, views=2, seed=0, batch_size=16, log=lambda s: None,
                  top_k=2)  # packed records (kd.topk) from the ranks' summed fp32 rows
    m = _mlp()
    save("kd_cached", m, fit(m, task, CFG, loss=KD(temperature=4.0), teacher=cached))
    m = _mlp()
    try:
        fit(m, _task(), CFG, checkpoint_path=out / "ckpt.safetensors", stop_after_epoch=1)
    except InterruptedError:
        pass
    # FitNets hints: the Linear adapter (student "2" -> teacher "0") is a trainable part of the loss that DDP does not
    # wrap; the loop averages its gradients by hand (`_average`)
    m = _mlp()
    hint = WeightedSum([(0.5, KD(temperature=4.0)), (1.0, Hint([("2", "0")]))])
    save("hint", m, fit(m, task, CFG, loss=hint, teacher=LiveTeacher(_teacher_model(), task)))
    torch.save({k: v.detach().clone() for k, v in hint.state_dict().items()}, out / f"hint_adapter_{dist.rank()}.pt")
    # dropout: each rank draws its own masks (seeded by seed, epoch and rank), so no match with one process is
    # promised; a run is reproducible, and a resumed run ends where an uninterrupted one does
    for name in ("dropout", "dropout_again"):
        m = _mlp_dropout()
        save(name, m, fit(m, _task(), CFG))
    m = _mlp_dropout()
    try:
        fit(m, _task(), CFG, checkpoint_path=out / "dropout_ckpt.safetensors", stop_after_epoch=1)
    except InterruptedError:
        pass
    dist.barrier()  # rank 0 wrote the checkpoint: every rank reads it
    m = _mlp_dropout()
    save("dropout_resumed", m, fit(m, _task(), CFG, checkpoint_path=out / "dropout_ckpt.safetensors", resume=True))
    # QAT's divergence watch: rank 0's share looks fine, rank 1's rose; the ranks must stop together (or not at all)
    watch = DivergenceWatch(StartPoint(0.5, None, "val", 0), None, None, loss_factor=2.0, margin_points=2.0)
    watch.start_epoch(1, 1, 10)
    try:
        watch.update(10, loss=0.4 if dist.rank() == 0 else 1.8)
        stopped = None
    except QATDiverged as e:
        stopped = e.reason
    (out / f"watch_{dist.rank()}.json").write_text(json.dumps(stopped))
    # QAT's fine-tuning (the qat target's training part) with a live KD teacher; "qat_local_observers" leaves each
    # rank's activation observers on its own share (the all-reduce disabled): the control that shows the
    # comparison can fail
    for name in ("qat", "qat_local_observers"):
        ft = Finetune(CFG, KD(temperature=4.0), LiveTeacher(_teacher_model(), task), seed=0, retries=0)
        with contextlib.ExitStack() as stack:
            if name == "qat_local_observers":
                stack.enter_context(mock.patch.object(dist, "all_reduce_max", lambda t: t))
            trained = qat_finetune(_mlp(), BuildContext(task, out / name, 2, ft))
        save(name, trained.prepared.model, trained.result)


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
    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scenarios(root / "one")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, str(root / "store"), str(root / "two")), nprocs=2, join=True)
    return root / "one", root / "two"


def _close(a: dict, b: dict, atol=1e-5) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4) for k in a)


@pytest.mark.parametrize("name", ["mlp", "mlp_accumulate", "cnn_sync_bn", "kd", "kd_cached", "hint", "qat"])
def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(runs, name):
    one, two = runs
    assert _close(torch.load(one / f"{name}.pt"), torch.load(two / f"{name}.pt"))
    assert json.loads((one / f"{name}.json").read_text()) == pytest.approx(
        json.loads((two / f"{name}.json").read_text()), rel=1e-5)


def test_without_sync_bn_each_rank_normalizes_its_own_share(runs):
    """The control that shows the sync_bn comparison can fail: plain BatchNorm on 8-example shares is not BatchNorm
    on the 16-example batch."""
    one, two = runs
    assert not _close(torch.load(one / "cnn.pt"), torch.load(two / "cnn.pt"))


def test_accumulation_gives_the_step_of_the_whole_batch(runs):
    one, _ = runs
    assert _close(torch.load(one / "mlp.pt"), torch.load(one / "mlp_accumulate.pt"))


def test_a_cache_built_by_two_ranks_is_byte_identical_to_one_process(runs):
    one, two = runs
    (a,), (b,) = list((one / "cache").glob("*.npy")), list((two / "cache").glob("*.npy"))
    assert a.read_bytes() == b.read_bytes()
    assert np.load(a).any()
    (a,), (b,) = list((one / "cache_top_k").glob("*.npy")), list((two / "cache_top_k").glob("*.npy"))
    assert a.read_bytes() == b.read_bytes()
    assert np.load(a)["top"].all() and np.load(a).shape == (2, 96)  # every row labelled


def test_resuming_with_another_number_of_processes_is_refused(runs):
    _, two = runs
    with pytest.raises(RecipeError, match="trained by 2 process"):
        fit(_mlp(), _task(), CFG, checkpoint_path=two / "ckpt.safetensors", resume=True)


def test_one_process_has_no_distributed_state(monkeypatch):
    assert (dist.world_size(), dist.rank(), dist.is_main(), dist.describe()) == (1, 0, True, None)
    assert dist.on_main(lambda: 7) == 7 and dist.main_first(lambda: 8) == 8
    assert [dist.shard_bounds(10, p, 3) for p in range(3)] == [(0, 3), (3, 6), (6, 10)]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init("cpu") is False


def test_distill_refuses_to_run_once_per_process_under_torchrun(monkeypatch):
    import leankd

    monkeypatch.setenv("WORLD_SIZE", "2")
    x, y = _data(32)
    with pytest.raises(RecipeError, match="leankd.distill\\(\\) trains in one process.*--nproc N"):
        leankd.distill(_teacher_model(), _mlp(), (x, y), epochs=1)


def test_fitnets_adapters_are_averaged_over_the_ranks(runs):
    """The hint adapter trains outside DDP (its gradients averaged by `_average`): both ranks end with the adapter one
    process trains, so the ranks' losses stay the same loss."""
    one, two = runs
    adapter = torch.load(one / "hint_adapter_0.pt")
    assert adapter and _close(adapter, torch.load(two / "hint_adapter_0.pt"))
    assert _close(torch.load(two / "hint_adapter_0.pt"), torch.load(two / "hint_adapter_1.pt"), atol=0)


def test_qat_observers_see_the_global_batch_and_training_matches_one_process(runs):
    """Each fake-quant observer's min/max under DDP is all-reduced over the ranks (qat.py), so it moves as one
    process's does; the tolerance is the float tolerance of the other comparisons (gradients summed in another
    order). Without the all-reduce (the control) the ranges, and so the weights, differ."""
    one, two = runs
    ref, got = torch.load(one / "qat.pt"), torch.load(two / "qat.pt")
    ranges = [k for k in ref if k.endswith(("min_val", "max_val"))]
    assert len(ranges) == 4 and all(ref[k].item() > 0 for k in ranges if k.endswith("max_val"))  # two layers' inputs
    assert _close({k: ref[k] for k in ranges}, {k: got[k] for k in ranges})
    assert not _close({k: ref[k] for k in ranges}, {k: torch.load(two / "qat_local_observers.pt")[k] for k in ranges})


def test_the_divergence_watch_stops_every_rank_on_the_global_running_loss(runs):
    """Rank 0's share has loss 0.4, rank 1's 1.8: the global running loss (1.1) is above 2 x the start (0.5), so both
    ranks stop, with the same reason (one rank stopping alone would leave the other waiting at its next all-reduce).
    One process, seeing only the 0.4, goes on."""
    one, two = runs
    reasons = [json.loads((two / f"watch_{rank}.json").read_text()) for rank in (0, 1)]
    assert reasons[0] == reasons[1] and "rose to 1.1 " in reasons[0]
    assert json.loads((one / "watch_0.json").read_text()) is None


def test_a_model_with_dropout_trains_reproducibly_and_resumes_to_the_uninterrupted_result(runs):
    """Dropout masks are drawn per rank (seeded by seed, epoch and rank): two 2-process runs give the same weights,
    and a run stopped after its first epoch and resumed ends bit-identical to the uninterrupted one."""
    _, two = runs
    first = torch.load(two / "dropout.pt")
    assert all(torch.equal(first[k], v) for k, v in torch.load(two / "dropout_again.pt").items())
    assert all(torch.equal(first[k], v) for k, v in torch.load(two / "dropout_resumed.pt").items())
    assert json.loads((two / "dropout_resumed.json").read_text()) == json.loads((two / "dropout.json").read_text())
