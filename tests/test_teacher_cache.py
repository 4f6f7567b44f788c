"""Teacher-output cache (offline KD): replayable augmentation views, logits equal to the live teacher's, reuse,
stale detection, training and resuming from the cache, and the recipe switch end to end."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leankd.cli import app
from leankd.data.augment import ImageAugment
from leankd.kd.cache import build_or_load, view_of_epoch
from leankd.kd.losses import KD
from leankd.kd.teacher import LiveTeacher
from leankd.models import create_model
from leankd.recipe import TrainConfig, parse_recipe
from leankd.errors import RecipeError
from leankd.tasks.base import TensorTask
from leankd.train.loop import fit

from test_pipeline import make_image_folder, write_recipe

runner = CliRunner()


def _task(n=80):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    augment = ImageAugment(crop_padding=2, hflip=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    return TensorTask({"train": (x, y), "val": (x[:16], y[:16])}, num_classes=3, transform=augment)


def test_a_view_is_the_same_augmentation_whatever_the_epoch_and_batch_size():
    task = _task()
    reference = task.view_inputs(1, seed=0).clone()
    for epoch, bs in ((0, 16), (7, 10)):
        for batch in task.train_batches(epoch, bs, seed=0, view=1):
            assert torch.equal(batch.inputs, reference[batch.index])
    assert not torch.equal(task.view_inputs(0, seed=0), reference)  # another view, another augmentation
    assert torch.equal(task.view_inputs(1, seed=0), reference)  # rebuilt after view 0: identical
    plain = task.transform(task.splits["train"][0], None, False)
    assert not torch.equal(reference, plain)  # the view is augmented


def test_cached_logits_equal_the_live_teacher_on_each_view(tmp_path):
    task = _task()
    torch.manual_seed(0)
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    logs = []
    cached, info = build_or_load(tmp_path, "fp1", live, task, views=3, seed=0, log=logs.append)
    assert info.views == 3 and info.samples == 80 and not info.reused and info.build_s is not None
    stored = np.load(tmp_path / "fp1.logits.npy")
    assert stored.dtype == np.float16 and stored.shape == (3, 80, 3)
    for view in range(3):
        cached.view = view
        batch = next(task.train_batches(0, 16, seed=0, view=view))
        expected = live(batch)
        assert torch.allclose(cached(batch), expected, atol=2e-2, rtol=1e-3)  # fp16 storage
    again, info2 = build_or_load(tmp_path, "fp1", live, task, views=3, seed=0, log=logs.append)
    assert info2.reused and info2.build_s is None and "reusing" in logs[-1]


def test_a_stale_or_incomplete_cache_is_rebuilt_never_read(tmp_path):
    task = _task()
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    logs = []
    build_or_load(tmp_path, "old", live, task, views=2, seed=0, log=logs.append)
    _, info = build_or_load(tmp_path, "new", live, task, views=2, seed=0, log=logs.append)
    assert not info.reused
    assert any("another teacher" in m for m in logs)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["new.json", "new.logits.npy"]
    # an array whose JSON never got written (killed between the two renames) is rebuilt
    (tmp_path / "new.json").unlink()
    _, info = build_or_load(tmp_path, "new", live, task, views=2, seed=0, log=logs.append)
    assert not info.reused
    # a JSON that describes another shape (other data) is rebuilt too
    meta = json.loads((tmp_path / "new.json").read_text())
    meta["shape"] = [2, 999, 3]
    (tmp_path / "new.json").write_text(json.dumps(meta))
    _, info = build_or_load(tmp_path, "new", live, task, views=2, seed=0, log=logs.append)
    assert not info.reused and "does not match" in " ".join(logs)


def test_kd_from_the_cache_trains_and_resumes_exactly(tmp_path):
    task = _task()
    torch.manual_seed(0)
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)

    def run(ckpt, **kw):
        cached, _ = build_or_load(tmp_path / "cache", "fp", live, task, views=2, seed=0, log=lambda m: None)
        torch.manual_seed(1)
        student = create_model("resnet8", num_classes=3)
        try:
            fit(student, task, cfg, loss=KD(4.0), teacher=cached, checkpoint_path=ckpt, **kw)
        except InterruptedError:
            pass
        return student

    full = run(tmp_path / "a.safetensors")
    run(tmp_path / "b.safetensors", stop_after_epoch=1)
    resumed = run(tmp_path / "b.safetensors", resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert len({view_of_epoch(e, 8, 0) for e in range(40)}) == 8  # every view gets drawn


def test_cache_and_feature_losses_do_not_mix():
    with pytest.raises(RecipeError, match="teacher.cache stores logits only"):
        parse_recipe({"teacher": {"model": "resnet14", "cache": True}, "student": {"model": "resnet8"},
                      "distill": {"features": [{"kind": "hint", "pairs": [["layer1", "layer1"]]}]}})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.slow
def test_recipe_switch_end_to_end(tmp_path, data):
    shared = tmp_path / "shared_cache"
    recipe = write_recipe(tmp_path, data, teacher={"model": "resnet14", "train": {"epochs": 2}, "cache": True,
                                                   "cache_views": 2, "cache_dir": str(shared)})
    res = runner.invoke(app, ["run", str(recipe), "-q"])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "tiny"
    rep = json.loads((run_dir / "report.json").read_text())
    cache = rep["models"]["student"]["training"]["teacher_cache"]
    assert cache["views"] == 2 and cache["disk_mb"] > 0 and cache["reused"] is False
    assert any("cached teacher logits" in n for n in rep["notes"])
    # another run dir with the same teacher, data and views: the cache is read, not rebuilt
    res = runner.invoke(app, ["run", str(recipe), "-q", "--run-dir", str(tmp_path / "other"), "--set",
                              f"teacher.checkpoint={run_dir / 'teacher' / 'model.safetensors'}"])
    assert res.exit_code == 0, res.output
    # a teacher loaded from a file has another fingerprint than the trained stage: a second cache file
    assert len(list(shared.glob("*.json"))) == 2
    res = runner.invoke(app, ["run", str(recipe), "-q", "--run-dir", str(tmp_path / "third"), "--set",
                              f"teacher.checkpoint={run_dir / 'teacher' / 'model.safetensors'}"])
    rep3 = json.loads((tmp_path / "third" / "report.json").read_text())
    assert rep3["models"]["student"]["training"]["teacher_cache"]["reused"] is True


def test_top_k_storage_keeps_the_top_logits_and_the_probability_total(tmp_path):
    from leankd.kd.cache import compress_top_k, expand_top_k
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    logits[:, 7] += 12  # one confident class, as for a trained teacher
    rows = compress_top_k(logits, 5)
    assert rows.shape == (6, 11)
    full = expand_top_k(rows, 5, 50)
    top_v, top_i = logits.topk(5, dim=1)
    assert torch.equal(full.gather(1, top_i), top_v)  # the k largest logits come back exactly
    p_orig, p_back = logits.softmax(1), full.softmax(1)
    assert torch.allclose(p_back.gather(1, top_i), p_orig.gather(1, top_i), atol=1e-5)  # and their probabilities
    tail = torch.ones_like(full, dtype=torch.bool).scatter_(1, top_i, False)
    assert torch.allclose((p_back * tail).sum(1), (p_orig * tail).sum(1), atol=1e-5)  # tail mass preserved
    # through the cache: 3 classes, top-2 per sample
    task = _task()
    live = LiveTeacher(create_model("resnet8", num_classes=3), task)
    cached, info = build_or_load(tmp_path, "k2", live, task, views=1, seed=0, log=lambda m: None, top_k=2)
    assert info.top_k == 2 and np.load(tmp_path / "k2.logits.npy").shape == (1, 80)  # one packed record per row
    assert info.bytes_per_row == 4 + 2 + 2 * 2 + 2  # fp32 top, fp16 second, 2 uint16 indices, fp16 tail
    batch = next(task.train_batches(0, 16, seed=0, view=0))
    got, want = cached(batch).dense(), live(batch)
    assert torch.equal(got.topk(2, 1).indices, want.topk(2, 1).indices)
    assert torch.equal(got.max(1).values, want.max(1).values)  # the largest logit is stored in fp32
    assert torch.allclose(got.topk(2, 1).values, want.topk(2, 1).values, atol=2e-3)  # the second: fp16 below it
    with pytest.raises(ValueError, match="cache_top_k = 3 must be between 1 and 2"):
        build_or_load(tmp_path, "k3", live, task, views=1, seed=0, log=lambda m: None, top_k=3)


def test_python_api_distills_from_a_cache(tmp_path):
    import leankd
    task = _task()
    result = leankd.distill(create_model("resnet8", num_classes=3), create_model("resnet8", num_classes=3), task,
                            epochs=2, batch_size=16, baseline=False, teacher_cache_views=2, run_dir=tmp_path,
                            measure={"latency_batch_sizes": [1], "latency_runs": 30, "latency_warmup": 1})
    cache = result.report["models"]["student"]["training"]["teacher_cache"]
    assert cache["views"] == 2 and cache["samples"] == 80 and (tmp_path / "teacher_cache").is_dir()
