"""Streamed recipe sources: WebDataset-style tar shards (`data.source: webdataset:PATTERN`) and a local Hugging Face
dataset read with streaming=True (`hf-stream:PATH`), trained through `IterableTask`; what a stream refuses, and what
it decodes (the same tensors as an ImageFolder of the same files). Data are a few generated 8x8 PNGs."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leankd
from leankd.data import shards
from leankd.data.images import load_images
from leankd.errors import DataError, RecipeError
from leankd.recipe import parse_recipe
from leankd.stages import data_fingerprints
from leankd.tasks import build_task
from leankd.validate import check_recipe

FAST = {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}
CPU = torch.device("cpu")


def png(label: int, k: int) -> bytes:
    """An 8x8 image whose dominant channel is its class (learnable in one epoch), with per-image noise."""
    rng = np.random.default_rng(k)
    a = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
    a[..., label] += 150
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def examples(n: int, start: int = 0, classes: int = 3) -> list[tuple[str, bytes, int]]:
    """(key, png, label), class-major like an ImageFolder's order (class, then file name)."""
    items = [(f"img{k:04d}", png(k % classes, k), k % classes) for k in range(start, start + n)]
    return sorted(items, key=lambda t: (t[2], t[0]))


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, prefix: str, items, n_shards: int, label=lambda key, y: (f"{key}.cls", str(y))):
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(items) // n_shards)
    for s in range(n_shards):
        with tarfile.open(folder / f"{prefix}-{s:06d}.tar", "w") as tf:
            for key, data, y in items[s * per:(s + 1) * per]:
                add(tf, f"{key}.png", data)
                if label is not None:
                    name, text = label(key, y)
                    add(tf, name, text.encode())
    return f"{folder}/{prefix}-{{{0:06d}..{n_shards - 1:06d}}}.tar"


def write_folder(root: Path, split: str, items) -> None:
    for key, data, y in items:
        path = root / split / f"c{y}" / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("streams")
    train, test = examples(96), examples(30, start=1000)
    train_pattern = write_shards(root / "shards", "train", train, 3)
    test_pattern = write_shards(root / "shards", "test", test, 1)
    write_folder(root / "folder", "train", train)
    write_folder(root / "folder", "test", test)
    return {"root": root, "train": train_pattern, "test": test_pattern, "folder": root / "folder",
            "train_items": train, "test_items": test}


def recipe(tmp_path: Path, source: str, stream: dict | None = None, **data) -> dict:
    return {"name": "s", "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "data": {"source": source, "num_workers": 0, "augment": {"crop_padding": 0, "hflip": False},
                     **({"stream": stream} if stream is not None else {}), **data},
            "teacher": {"model": "resnet8", "train": {"epochs": 1}}, "student": {"model": "resnet8"},
            "train": {"epochs": 1, "batch_size": 16}, "measure": FAST}


# ------------------------------------------------------------------------------------------------ the format
def test_brace_expansion():
    assert shards.expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert shards.expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert shards.expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(DataError, match=r"\{abc\} is neither a range"):
        shards.expand_braces("s-{abc}.tar")


def test_samples_group_by_key_and_read_each_label_form(tmp_path):
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tf:
        add(tf, "./n01.jpg", b"j")
        add(tf, "./n01.cls", b" 2\n")
        add(tf, "d/n02.seg.png", b"p")
        add(tf, "d/n02.json", json.dumps({"label": 1, "other": "x"}).encode())
        add(tf, "n03.png", b"p")
        add(tf, "n03.label", b"cat")
        add(tf, ".hidden.cls", b"0")
    got = [(key, sorted(members)) for key, members in shards.samples(path)]
    assert got == [("n01", ["cls", "jpg"]), ("d/n02", ["json", "seg.png"]), ("n03", ["label", "png"])]
    scan = shards.scan_shards([path], "train data")
    assert scan.counts == [3] and scan.labels == [2, 1, "cat"]


def test_label_and_image_refusals_name_the_shard_and_the_key(tmp_path):
    path = tmp_path / "nolabel.tar"
    with tarfile.open(path, "w") as tf:
        add(tf, "a.png", b"p")
        add(tf, "a.cls", b"0")
        add(tf, "b.png", b"p")
    with pytest.raises(DataError, match=r"nolabel.tar: sample 'b' has no label .* add b.cls"):
        shards.scan_shards([path], "train data")
    path = tmp_path / "noimage.tar"
    with tarfile.open(path, "w") as tf:
        add(tf, "a.cls", b"0")
    with pytest.raises(DataError, match=r"sample 'a' has no image"):
        shards.scan_shards([path], "train data")


def test_missing_shards_are_named(tmp_path, data):
    pattern = data["train"].replace("000002", "000004")  # shards 3 and 4 do not exist
    with pytest.raises(DataError, match=r"2 of the 5 shards .* not found "
                                        r"\(.*train-000003.tar, .*train-000004.tar\): fix the pattern"):
        shards.shard_paths(pattern, "train shards")


def test_shuffle_is_seeded_per_epoch_and_workers_split_the_shards(data):
    paths = shards.shard_paths(data["train"], "train shards")
    stream = shards.ShardStream(paths, None, None, shuffle=8, seed=3)
    labels = lambda s: [y for _, y in s]  # noqa: E731
    first, again = labels(stream), labels(stream)
    stream.set_epoch(1)
    other = labels(stream)
    assert first == again and first != other  # the same epoch replays its order; the next one reshuffles
    assert sorted(first) == sorted(other) == sorted(y for _, _, y in data["train_items"])  # each sample once
    loader = torch.utils.data.DataLoader(shards.ShardStream(paths, None, None), batch_size=None, num_workers=2)
    assert sorted(int(y) for _, y in loader) == sorted(y for _, _, y in data["train_items"])


def test_a_rank_decodes_only_its_rows_of_each_batch(data):
    """Under torchrun (rank 1 of 2, batches of 4) rows 2-3 of every batch are decoded, rows 0-1 are zeros the loop
    never trains this rank on; labels are all there. With two DataLoader workers the rows count per worker."""
    paths = shards.shard_paths(data["train"], "train shards")
    full = list(shards.ShardStream(paths, None, None))
    stream = shards.ShardStream(paths, None, None)
    stream.set_share(shards.RankShare(4, rank=1, world=2, shape=(3, 8, 8)))
    mine = list(stream)
    assert [y for _, y in mine] == [y for _, y in full]
    for i, ((x, _), (ref, _)) in enumerate(zip(mine, full)):
        assert torch.equal(x, ref) if i % 4 in (2, 3) else not x.any()
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, drop_last=True)
    for x, _ in loader:
        assert not x[:2].any() and x[2:].flatten(1).any(1).all()


# ------------------------------------------------------------------------------------ the same as a folder
def test_shards_decode_to_the_same_images_as_the_image_folder(tmp_path, data):
    """The same PNGs as an ImageFolder (in memory) and as shards (streamed, shuffle 0): the same uint8 images and
    labels in the same order, and the task's evaluation batches (normalized alike) are equal."""
    folder = load_images(data["folder"])
    paths = shards.shard_paths(data["train"], "train shards")
    images, labels = zip(*shards.ShardStream(paths, None, None))
    assert torch.equal(torch.stack(images), folder.train.images)
    assert torch.equal(torch.tensor(labels), folder.train.labels)
    norm = {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3], "val_fraction": 0.0}
    from_folder = parse_recipe(recipe(tmp_path, str(data["folder"]), cache_dir=str(tmp_path / "c"), **norm))
    from_shards = parse_recipe(recipe(tmp_path, "webdataset:" + data["train"], {"test": data["test"], "shuffle": 0},
                                      **norm))
    a = build_task(from_folder.data, CPU, 0)
    b = build_task(from_shards.data, CPU, 0)
    assert b.num_classes == 3 and b.split_size("train") == 96 and b.split_size("test") == 30
    for x, y in zip(a.eval_batches("test", 16), b.eval_batches("test", 16), strict=True):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    first = next(b.train_batches(0, 16, seed=0))  # shuffle 0: the folder's order
    assert torch.equal(first.targets, folder.train.labels[:16])


# ---------------------------------------------------------------------------------------------- end to end
def test_recipe_on_shards_trains_teacher_baseline_and_kd(tmp_path, data):
    r = recipe(tmp_path, "webdataset:" + data["train"], {"test": data["test"], "val": data["test"], "shuffle": 100},
               limit_train=64)
    result = leankd.run(r, quiet=True)
    report = result.report
    assert set(report["models"]) == {"teacher", "baseline", "student"}
    ds = report["run"]["dataset"]
    assert ds["train_size"] == 64 and ds["eval_size"] == 30 and ds["num_classes"] == 3  # limit: the first 64
    assert ds["storage"] == "streamed (webdataset)" and ds["stream"] is True
    assert any("first 64 examples" in n for n in report["notes"])
    assert any("no teacher cache" in n for n in report["notes"])
    for stage in ("teacher", "baseline", "student"):
        rows = [json.loads(x) for x in (result.run_dir / stage / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and "val_accuracy" in json.dumps(rows[0])  # one epoch, validated on stream.val
    assert not (result.run_dir / "teacher_cache").exists()
    assert report["models"]["teacher"]["quality"]["accuracy"] > 0.5  # the dominant channel: learnable at once


def test_an_epoch_is_the_same_whether_or_not_the_one_before_ran(tmp_path, data):
    """What makes `--resume` exact on a one-pass stream: epoch 1's batches (shuffle, augmentation) come from (seed,
    epoch) alone, so a task that starts at epoch 1 draws what one that ran epoch 0 first draws."""
    r = parse_recipe(recipe(tmp_path, "webdataset:" + data["train"], {"test": data["test"], "shuffle": 20},
                            augment={"crop_padding": 2, "hflip": True}))
    ran, fresh = build_task(r.data, CPU, 0), build_task(r.data, CPU, 0)
    epoch0 = list(ran.train_batches(0, 16, seed=5))
    after, alone = list(ran.train_batches(1, 16, seed=5)), list(fresh.train_batches(1, 16, seed=5))
    assert len(after) == len(alone) == 6
    for a, b in zip(after, alone):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(epoch0[0].targets, after[0].targets)  # a new epoch reshuffles


def test_steps_per_epoch_skips_the_label_pass(tmp_path, data, monkeypatch):
    calls = []
    monkeypatch.setattr(shards, "scan_shards", lambda paths, what: calls.append(what) or _real_scan(paths, what))
    r = parse_recipe(recipe(tmp_path, "webdataset:" + data["train"],
                            {"test": data["test"], "steps_per_epoch": 2, "num_classes": 3}))
    task = build_task(r.data, CPU, 0)
    assert calls == ["test data"]  # the training shards were not scanned
    assert [len(b.targets) for b in task.train_batches(0, 16, seed=0)] == [16, 16]
    assert [len(b.targets) for b in task.train_batches(1, 16, seed=0)] == [16, 16]  # the stream continues


_real_scan = shards.scan_shards


def test_hf_stream_recipe_end_to_end(tmp_path, data):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green",
                                                                                              "blue"])})
    folder = tmp_path / "hf"
    folder.mkdir()
    for split, items in (("train", data["train_items"]), ("test", data["test_items"])):
        rows = {"image": [{"bytes": b, "path": None} for _, b, _ in items], "label": [y for _, _, y in items]}
        datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(folder / f"{split}.parquet"))
    r = recipe(tmp_path, f"hf-stream:{folder}", {"test": "test", "shuffle": 100})
    report = leankd.run(r, quiet=True).report
    ds = report["run"]["dataset"]
    assert ds["classes"] == ["red", "green", "blue"] and ds["train_size"] == 96 and ds["eval_size"] == 30
    assert ds["storage"] == "streamed (hf-stream)"
    assert report["models"]["teacher"]["quality"]["accuracy"] > 0.5


def test_hf_stream_jsonl_with_image_paths_decodes_like_the_folder(tmp_path, data):
    """A .jsonl whose image column holds file paths (relative to the file's folder) and whose labels are integers:
    the same images as the folder they point into; a missing column and a split a single file lacks are named."""
    pytest.importorskip("datasets")
    from leankd.data import hfstream

    lines = [json.dumps({"file": f"train/c{y}/{key}.png", "y": y}) for key, _, y in data["train_items"]]
    (data["folder"] / "train.jsonl").write_text("\n".join(lines))

    ds, names = hfstream.prepare(hfstream.open_stream(str(data["folder"] / "train.jsonl"), "train", "train data"),
                                 "file", "y", "train data")
    stream = hfstream.HFImageStream(ds, "file", "y", data["folder"], None, None, 3)
    images = torch.stack([x for x, _ in stream])
    assert names is None and torch.equal(images, load_images(data["folder"]).train.images)
    with pytest.raises(DataError, match=r"no column 'pixels' \(data.stream.image_column\); its columns: file, y"):
        hfstream.prepare(hfstream.open_stream(str(data["folder"] / "train.jsonl"), "train", "train data"),
                         "pixels", "y", "train data")
    with pytest.raises(DataError, match=r"only split is 'train', not 'test'"):
        hfstream.open_stream(str(data["folder"] / "train.jsonl"), "test", "test data")


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("change, needles", [
    ({"teacher": {"model": "resnet8", "cache": True}},
     ["teacher.cache", "stable sample index", "turn teacher.cache off"]),
    ({"teacher": {"model": "resnet8", "limit_train": 10}}, ["teacher.limit_train", "remove it"]),
    ({"data": {"in_memory": True}}, ["data.in_memory", "remove data.in_memory"]),
    ({"data": {"val_fraction": 0.2}}, ["data.val_fraction", "data.stream.val"]),
    ({"data": {"stream": {"shuffle": 0}}}, ["data.stream.test", "give"]),
    ({"data": {"stream": {"test": "t.tar", "steps_per_epoch": 5}}}, ["data.stream.num_classes"]),
    ({"data": {"stream": {"test": "t.tar", "steps_per_epoch": 5, "num_classes": 3}, "limit_train": 8}},
     ["data.limit_train", "steps_per_epoch", "remove one"]),
])
def test_recipe_refuses_what_a_stream_cannot_do(tmp_path, change, needles):
    raw = recipe(tmp_path, "webdataset:s-{0..1}.tar", {"test": "t.tar"})
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    with pytest.raises(RecipeError) as e:
        parse_recipe(raw)
    for needle in needles:
        assert needle in " ".join(str(e.value).split())


def test_stream_section_needs_a_stream_source(tmp_path):
    with pytest.raises(RecipeError, match="data.stream applies to a streamed source"):
        parse_recipe(recipe(tmp_path, "demo", {"test": "x"}))


def test_other_task_kinds_refuse_a_streamed_source(tmp_path):
    raw = recipe(tmp_path, "webdataset:s-{0..1}.tar", {"test": "t.tar"}, task="keyword_spotting")
    with pytest.raises(RecipeError, match=r"is a stream, which data.task 'keyword_spotting' does not read "
                                          r"\(streamed sources are read by image_classification\)"):
        parse_recipe(raw)


def test_fingerprint_of_a_recipe_without_stream_is_unchanged(tmp_path):
    """`data.stream` unset is left out of the data fingerprint, so existing run directories stay valid."""
    r = parse_recipe(recipe(tmp_path, "demo"))

    class T:
        info = {"fingerprint": "x"}

    data_fp, teacher_fp = data_fingerprints(r, T())
    assert "stream" not in data_fp["data"] and "stream" not in teacher_fp["data"]
    assert set(data_fp["data"]) == set(r.data.model_dump()) - {"stream", "text", "cache_dir", "num_workers",
                                                               "limit_test", "split_seed"}


def test_validate_reads_only_the_first_sample(tmp_path, data):
    r = parse_recipe(recipe(tmp_path, "webdataset:" + data["train"], {"test": data["test"]}))
    unchecked = check_recipe(r)
    assert any("only the first sample of each split was read" in u for u in unchecked)
    elsewhere = parse_recipe(recipe(tmp_path, "webdataset:/nowhere/s-{0..3}.tar", {"test": "/nowhere/t.tar"}))
    assert any("no shard found" in u for u in check_recipe(elsewhere))
    bad = tmp_path / "bad-0.tar"
    with tarfile.open(bad, "w") as tf:
        add(tf, "a.png", png(0, 0))
    with pytest.raises(DataError, match=r"sample 'a' has no label"):
        check_recipe(parse_recipe(recipe(tmp_path, f"webdataset:{bad}", {"test": data["test"]})))


@pytest.mark.slow  # two interpreters under torchrun plus a one-process run: about a minute on 2 busy cores
def test_three_shards_on_two_processes_train_what_one_process_trains(tmp_path, data):
    """torchrun with 2 processes on 3 shards (not divisible by the world size): every rank reads every shard in the
    same order and trains on its share of each global batch, decoding only that share, so the step counts match (no
    hang) and the losses are one process's (BatchNorm over the global batch: train.sync_bn)."""
    import subprocess
    import sys

    import yaml

    r = recipe(tmp_path, "webdataset:" + data["train"], {"test": data["test"], "shuffle": 100})
    r["train"]["sync_bn"], r["baseline"] = True, False  # two stages are enough to show it
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    runs = {"one": tmp_path / "one", "two": tmp_path / "two"}
    leankd.run(r, run_dir=runs["one"], quiet=True)
    out = subprocess.run([sys.executable, "-m", "leankd", "run", str(path), "--run-dir", str(runs["two"]), "-q",
                          "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for stage in ("teacher", "student"):
        one, two = ([json.loads(x)["train_loss"] for x in (runs[n] / stage / "metrics.jsonl").read_text().splitlines()]
                    for n in ("one", "two"))
        assert two == pytest.approx(one, rel=2e-3), stage


def test_a_file_that_is_not_a_tar_is_named(tmp_path):
    bad = tmp_path / "broken-0.tar"
    bad.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(DataError, match=r"cannot read shard .*broken-0.tar .*re-create it"):
        shards.scan_shards([bad], "train data")
