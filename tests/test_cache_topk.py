"""Compact top-k teacher cache (kd.topk): packed rows come back as the fp32 rows to fp16 below the largest logit,
indices exactly (uint16, int32 past 65,536 classes), 4k + 4 bytes per row on disk, reuse, a cache in the older fp32
layout rebuilt under the same name, and through a recipe: the student stages that used an old-layout cache are not
retrained, another teacher makes another cache."""
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from leankd.cli import app
from leankd.kd.cache import build_or_load
from leankd.kd.teacher import LiveTeacher
from leankd.kd.topk import compress_top_k, expand_top_k, pack_top_k, record_dtype, unpack_top_k
from leankd.tasks.base import TensorTask

from test_failure_catalogue import tiny_recipe, write_yaml

runner = CliRunner()


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    lp, lq = p_logits.log_softmax(1), q_logits.log_softmax(1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


def _round_trip(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rows = compress_top_k(logits, k)
    records = pack_top_k(rows, k, record_dtype(k, logits.shape[1]))
    return rows, unpack_top_k(records, k), records


def test_a_hand_made_row_packs_to_12_bytes_and_comes_back():
    logits = torch.tensor([[0.0, 40.0, 0.0, 39.0, 0.0]])  # top-2: 40 at class 1, 39 at class 3
    rows, back, records = _round_trip(logits, 2)
    assert records.dtype.itemsize == 4 + 2 + 2 * 2 + 2  # fp32 top, fp16 second, 2 uint16 indices, fp16 tail
    assert float(records["top"][0]) == 40.0 and records["rest"][0].tolist() == [-1.0]
    assert records["indices"][0].tolist() == [1, 3] and records["indices"].dtype == np.uint16
    # tail: the 3 other classes share their mass equally: log((e^0 + e^0 + e^0) / 3) = 0, stored as 0 - 40
    assert float(records["tail"][0]) == -40.0 and float(back[0, 4]) == 0.0
    # (as 1 - p(40) - p(39) in fp32, that mass, 3e-18, is rounding noise: the tail would be far from 0)
    lse = torch.logsumexp(logits[0], 0)
    noisy, true = float(1 - torch.exp(40 - lse) - torch.exp(39 - lse)), 3 * float(torch.exp(-lse))
    assert not abs(noisy - true) < 0.5 * true
    expanded = expand_top_k(back, 2, 5)
    assert torch.equal(expanded, logits)  # every other logit was 0: the row comes back exactly


def test_packed_rows_equal_the_fp32_rows_to_fp16_below_the_largest_logit():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 1000, generator=g) * 3 + 30  # a language model's logits sit far from 0
    rows, back, records = _round_trip(logits, 20)
    assert records.dtype.itemsize == 84 == 4 * 20 + 4  # vs 8k + 4 = 164 for the fp32 rows
    assert torch.equal(back[:, 0], rows[:, 0])  # the largest logit: fp32
    assert torch.equal(back[:, 20:40], rows[:, 20:40])  # the indices: exact
    diff = rows - rows[:, :1]
    err = (back - rows).abs()
    # fp16 rounding of the difference to the largest logit: half a step, 2**-11 of it, plus the fp32 re-add
    bound = diff.abs() * 2 ** -11 + rows.abs() * 2 ** -23
    assert bool((err[:, 1:20] <= bound[:, 1:20]).all()) and bool((err[:, 40] <= bound[:, 40]).all())
    assert float(err[:, 1:20].max()) > 0  # fp16 storage does round (the bound above is not vacuous)
    torch.testing.assert_close(expand_top_k(back, 20, 1000), expand_top_k(rows, 20, 1000), atol=4e-3, rtol=0)


def test_indices_past_65535_classes_are_int32_and_exact():
    for classes, index_type, top in ((65_536, np.uint16, [65_535, 0, 40_000]), (70_000, np.int32, [69_999, 65_536, 3])):
        logits = torch.zeros(2, classes)
        logits[:, top] = torch.tensor([9.0, 8.0, 7.0])
        rows, back, records = _round_trip(logits, 3)
        assert records["indices"].dtype == index_type
        assert records.dtype.itemsize == 4 + 2 * 2 + 3 * np.dtype(index_type).itemsize + 2
        assert back[:, 3:6].long().tolist() == [top, top]
        expanded = expand_top_k(back, 3, classes)
        assert expanded[:, top].tolist() == [[9.0, 8.0, 7.0]] * 2 and expanded.argmax(1).tolist() == [top[0]] * 2


def test_kl_of_the_packed_rows_is_far_below_fp16_of_the_raw_logits():
    """V = 1000, k = 20, KL(dense from the fp32 rows || dense from the stored rows). Storing the raw logits in fp16
    (the control) loses ~100x more on logits far from 0; both are far below what top-k itself changes."""
    g = torch.Generator().manual_seed(1)
    random = torch.randn(2048, 1000, generator=g)
    peaked = torch.randn(2048, 1000, generator=g) * 2 + 30
    peaked[torch.arange(2048), torch.randint(1000, (2048,), generator=g)] += 8
    for logits, packed_max, raw_min in ((random, 1e-6, 0.0), (peaked, 1e-6, 5e-6)):
        rows, back, _ = _round_trip(logits, 20)
        dense = expand_top_k(rows, 20, 1000)
        raw16 = rows.clone()
        raw16[:, :20], raw16[:, 40] = rows[:, :20].half().float(), rows[:, 40].half().float()
        packed_kl, raw_kl = _kl(dense, expand_top_k(back, 20, 1000)), _kl(dense, expand_top_k(raw16, 20, 1000))
        assert 0 <= packed_kl < packed_max and raw_kl >= raw_min
        if raw_min:
            assert raw_kl > 10 * packed_kl


def _many_class_task(classes=300, n=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 12, generator=g), torch.randint(0, classes, (n,), generator=g)
    return TensorTask({"train": (x, y), "val": (x[:8], y[:8])}, num_classes=classes)


def _teacher(task, seed=0):
    torch.manual_seed(seed)
    return LiveTeacher(nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, task.num_classes)), task)


def _payload_bytes(path) -> int:
    return path.stat().st_size - np.load(path, mmap_mode="r").offset  # the file less its .npy header


def test_a_300_class_cache_takes_4k_plus_4_bytes_per_row_on_disk_and_is_reused(tmp_path):
    task, logs = _many_class_task(), []
    live = _teacher(task)
    cached, info = build_or_load(tmp_path, "fp", live, task, views=2, seed=0, log=logs.append, top_k=8)
    assert info.bytes_per_row == 4 * 8 + 4 and not info.reused and info.build_s is not None
    path = tmp_path / "fp.logits.npy"
    assert _payload_bytes(path) == 2 * 64 * 36  # views x rows x bytes per row
    meta = json.loads((tmp_path / "fp.json").read_text())
    assert meta["format"] == 2 and meta["top_k"] == 8 and meta["shape"] == [2, 64, 300]
    batch = next(task.train_batches(0, 16, seed=0, view=0))
    want = expand_top_k(compress_top_k(live(batch), 8), 8, 300)
    torch.testing.assert_close(cached(batch).dense(), want, atol=2e-3, rtol=0)
    again, info2 = build_or_load(tmp_path, "fp", live, task, views=2, seed=0, log=logs.append, top_k=8)
    assert info2.reused and info2.build_s is None and "reusing" in logs[-1]
    assert torch.equal(again(batch).rows, cached(batch).rows)
    dense_dir = tmp_path / "dense"
    _, dense = build_or_load(dense_dir, "fp", live, task, views=2, seed=0, log=logs.append)
    assert dense.bytes_per_row == 2 * 300 and _payload_bytes(dense_dir / "fp.logits.npy") == 2 * 64 * 600
    assert json.loads((dense_dir / "fp.json").read_text())["format"] == 1  # dense caches keep their format


def test_a_top_k_cache_in_the_older_fp32_layout_is_rebuilt_under_the_same_name(tmp_path):
    task, logs = _many_class_task(), []
    live = _teacher(task)
    build_or_load(tmp_path, "fp", live, task, views=1, seed=0, log=logs.append, top_k=8)
    old = unpack_top_k(np.load(tmp_path / "fp.logits.npy")[0], 8).numpy()[None]  # [1, 64, 17] fp32, as before
    np.save(tmp_path / "fp.logits.npy", old)
    meta = json.loads((tmp_path / "fp.json").read_text())
    (tmp_path / "fp.json").write_text(json.dumps({**meta, "format": 1, "dtype": "float32"}))
    cached, info = build_or_load(tmp_path, "fp", live, task, views=1, seed=0, log=logs.append, top_k=8)
    assert not info.reused and any("older fp32 layout" in m for m in logs)
    assert np.load(tmp_path / "fp.logits.npy").shape == (1, 64) and info.bytes_per_row == 36
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["fp.json", "fp.logits.npy"]


@pytest.mark.slow
def test_recipe_top_k_cache_old_layout_keeps_the_student_and_another_teacher_makes_another_cache(tmp_path):
    recipe = tiny_recipe(tmp_path, teacher={"cache": True, "cache_top_k": 3, "cache_views": 2}, baseline=False)
    path = write_yaml(tmp_path / "r.yaml", recipe)
    run_dir = tmp_path / "runs" / "tiny"
    res = runner.invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((run_dir / "report.json").read_text())
    cache = report["models"]["student"]["training"]["teacher_cache"]
    assert cache["top_k"] == 3 and cache["bytes_per_row"] == 16 and cache["reused"] is False  # 10 demo classes
    assert any("top-3 logits + a tail, 16 bytes per row" in n for n in report["notes"])
    (meta_path,) = (run_dir / "teacher_cache").glob("*.json")
    # the run directory as an older leankd left it: the same cache name, fp32 rows
    rows = np.load(meta_path.with_suffix(".logits.npy"))
    np.save(meta_path.with_suffix(".logits.npy"), np.stack([unpack_top_k(v, 3).numpy() for v in rows]))
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": 1, "dtype": "float32"}))
    student = {p: (run_dir / "student" / p).read_bytes() for p in ("stage.json", "model.safetensors")}
    res = runner.invoke(app, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    assert {p: (run_dir / "student" / p).read_bytes() for p in student} == student  # reused, not retrained
    assert json.loads(meta_path.read_text())["format"] == 1  # and the cache not even read
    # another teacher: another cache fingerprint; the run directory's old cache is removed
    res = runner.invoke(app, ["run", str(path), "-q", "--set", "teacher.train.epochs=2"])
    assert res.exit_code == 0, res.output
    (new_meta,) = (run_dir / "teacher_cache").glob("*.json")
    assert new_meta.name != meta_path.name and json.loads(new_meta.read_text())["format"] == 2
    cache = json.loads((run_dir / "report.json").read_text())["models"]["student"]["training"]["teacher_cache"]
    assert cache["reused"] is False and cache["path"] == str(new_meta.with_suffix(".logits.npy"))
