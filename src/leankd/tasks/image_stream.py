"""Image classification on a streamed recipe source: WebDataset-style tar shards (`webdataset:PATTERN`) or a local
Hugging Face dataset read with `streaming=True` (`hf-stream:PATH`), trained through `IterableTask`.

What a stream changes, feature by feature (the recipe refuses, before anything trains, what cannot apply:
`kinds/image_classification.check_stream`):
- one pass per epoch, its length counted by a label pass that reads every training shard (or row's label) once
  without decoding an image; the pass also finds the classes and fails on a sample without a label.
  `data.stream.steps_per_epoch` skips it (an endless or very large stream) and then needs `num_classes`;
- order: a seeded shuffle buffer (`data.stream.shuffle`, the shard order too), reshuffled each epoch;
- `data.limit_train` / `data.limit_test`: the stream's first N examples, not a stratified subset;
- `data.val_fraction` does not apply (no index to hold examples out by): per-epoch validation reads
  `data.stream.val`, the report `data.stream.test` (one of them is required);
- mean/std (unless given) come from the first `STATS_SAMPLE` training examples of epoch 0's order;
- no teacher cache, `teacher.limit_train` or `in_memory` (they need a stable sample index or the data in memory);
- under torchrun every rank reads the whole stream in the same order and the loop trains each on its share of
  every global batch (`IterableTask`): the same batches as one process, equal step counts on every rank whatever
  the number of shards. Each rank decodes only its own rows of each batch (`shards.RankShare`; the rest are read,
  not decoded), so decoding is split between the ranks; reading is not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..data import shards
from ..errors import DataError
from ..recipe import DataConfig
from ..recipe_stream import StreamConfig, stream_kind
from .image import _augment, _info  # the in-memory path's augmentation and report statement, unchanged
from .items import Source
from .stream import IterableTask

STATS_SAMPLE = 2000  # training examples the mean/std are computed from (as for a streamed ImageFolder); with
# data.mean/std given, 64 only (the image size and the report's grayscale check read them)


def build_stream_image_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> IterableTask:
    stream = cfg.stream or StreamConfig()
    kind = stream_kind(cfg.source)
    location = cfg.source.split(":", 1)[1]
    counted = stream.steps_per_epoch is None
    notes: list[str] = []
    build = _webdataset if kind == "webdataset" else _hf_stream
    datasets, classes, identity = build(location, stream, cfg, seed, counted, notes)
    num_classes = len(classes)
    if num_classes < 2:
        raise DataError(f"data.source {cfg.source}: the labels name {num_classes} class; image classification needs "
                        "at least two")
    sample = _first(datasets["train"], STATS_SAMPLE if cfg.mean is None else 64)
    augment = _augment(cfg, sample, channels_last)
    sizes = {name: len(ds) for name, ds in datasets.items() if _sized(ds)}
    split = {"method": "given splits (streamed)", "unit": "images", "examples": sizes or None,
             "detail": "train, validation and test are the sources the recipe names (data.source, data.stream)"}
    info = {**_info(cfg, augment, sample.shape, identity, streamed=True, train_images=sample, split=split),
            "storage": f"streamed ({kind})"}
    task = IterableTask({name: Source(ds, num_workers=cfg.num_workers if name == "train" else 0)
                         for name, ds in datasets.items()}, num_classes, device,
                        steps_per_epoch=stream.steps_per_epoch, transform=augment, class_names=classes, info=info)
    task.kind = "image_classification"
    task.share_shape = tuple(sample.shape[1:])  # under torchrun a rank decodes only its rows of each batch
    task.eval_split = _eval_split(cfg.eval_split, datasets, notes)
    if "val" not in datasets:
        notes.append("no per-epoch validation: a stream has no index to hold examples out by (data.val_fraction does "
                     "not apply); give data.stream.val")
    order = (f"through a shuffle buffer of {stream.shuffle} examples, reshuffled each epoch" if stream.shuffle
             else "in the stream's own order (data.stream.shuffle: 0)")
    task.notes = [f"the training data was streamed ({kind}) {order}; no teacher cache (it needs a stable sample "
                  "index)"] + notes
    return task


def _sized(dataset) -> bool:
    try:
        len(dataset)
        return True
    except TypeError:
        return False


def _eval_split(wanted: str, datasets: dict, notes: list[str]) -> str:
    if wanted in datasets:
        return wanted
    if wanted == "test" and "val" in datasets:
        notes.append("no data.stream.test: the report is measured on the validation split (data.stream.val)")
        return "val"
    raise DataError(f"data.eval_split is {wanted!r} but data.stream.{wanted} is not set: give the {wanted} split "
                    "(shards, or a split name for hf-stream)")


def _first(dataset, n: int) -> torch.Tensor:
    """The first `n` images of epoch 0's order (uint8), for mean/std and the report's statement."""
    if callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(0)
    images = []
    for x, _ in dataset:
        images.append(x)
        if len(images) >= n:
            break
    if not images:
        raise DataError("data.source: the training stream yielded no example")
    try:
        return torch.stack(images)
    except RuntimeError:
        raise DataError("the training images have different sizes: set data.image_size to resize them all to one "
                        "square size") from None


def _limit_note(limit: Optional[int], total: Optional[int], what: str, notes: list[str]) -> Optional[int]:
    if limit is None or (total is not None and limit >= total):
        return None
    notes.append(f"{what} limited to the stream's first {limit} examples (data.limit_{what.split()[0]}; a stream "
                 "cannot be subsampled by class)")
    return limit


def _webdataset(pattern: str, stream: StreamConfig, cfg: DataConfig, seed: int, counted: bool, notes: list[str]):
    patterns = {"train": pattern, "val": stream.val, "test": stream.test}
    paths = {name: shards.shard_paths(p, f"{name} shards") for name, p in patterns.items() if p}
    scans = {name: shards.scan_shards(ps, f"{name} data") for name, ps in paths.items()
             if name != "train" or counted}
    labels = [x for scan in scans.values() for x in scan.labels]
    if not labels:  # uncounted: the first sample tells whether labels are indices
        _, first, _ = shards.first_sample(paths["train"], "train data")
        labels = [first] if isinstance(first, str) else []
        if stream.num_classes is None:
            raise DataError("data.stream.steps_per_epoch skips the label pass that finds the classes: give "
                            "data.stream.num_classes too")
    classes, index = shards.class_index(labels, stream.num_classes, f"data.source {cfg.source}")
    datasets = {}
    for name, ps in paths.items():
        scan = scans.get(name)
        total = sum(scan.counts) if scan else None
        limit = _limit_note(cfg.limit_train if name == "train" else cfg.limit_test if name == "test" else None,
                            total, "train split" if name == "train" else "test split", notes)
        quota = shards.quotas(scan.counts, limit) if scan else None
        datasets[name] = shards.ShardStream(
            ps, index, cfg.image_size, shuffle=stream.shuffle if name == "train" else 0, seed=seed, quota=quota,
            length=(sum(quota) if quota else total), what=f"{name} data", num_classes=len(classes))
    identity = shards.files_identity([p for ps in paths.values() for p in ps])
    return datasets, classes, identity


def _hf_stream(path: str, stream: StreamConfig, cfg: DataConfig, seed: int, counted: bool, notes: list[str]):
    from ..data import hfstream

    splits = {"train": stream.split, "val": stream.val, "test": stream.test}
    opened, names = {}, None
    for name, split in splits.items():
        if split:
            ds, found = hfstream.prepare(hfstream.open_stream(path, split, f"{name} data"), stream.image_column,
                                         stream.label_column, f"{name} data")
            opened[name], names = ds, names or found
    labels = {name: hfstream.scan_labels(ds, stream.label_column, f"{name} data") for name, ds in opened.items()
              if name != "train" or counted}
    if names is not None:
        classes, index = names, None
        if stream.num_classes is not None and stream.num_classes != len(names):
            raise DataError(f"data.stream.num_classes is {stream.num_classes} but the label column names "
                            f"{len(names)} classes: remove num_classes")
    else:
        seen = [x for values in labels.values() for x in values]
        if not seen and stream.num_classes is None:
            raise DataError("data.stream.steps_per_epoch skips the label pass that finds the classes: give "
                            "data.stream.num_classes too")
        classes, index = shards.class_index(seen, stream.num_classes, f"data.source {cfg.source}")
    base = Path(path).expanduser()
    base = base if base.is_dir() else base.parent
    datasets = {}
    for name, ds in opened.items():
        total = len(labels[name]) if name in labels else None
        limit = _limit_note(cfg.limit_train if name == "train" else cfg.limit_test if name == "test" else None,
                            total, "train split" if name == "train" else "test split", notes)
        datasets[name] = hfstream.HFImageStream(
            ds, stream.image_column, stream.label_column, base, cfg.image_size, index, len(classes),
            shuffle=stream.shuffle if name == "train" else 0, seed=seed, limit=limit,
            length=limit if limit is not None else total, what=f"{name} data")
    files = sorted(p for p in base.rglob("*") if p.is_file()) if Path(path).expanduser().is_dir() \
        else [Path(path).expanduser()]
    return datasets, classes, shards.files_identity(files)


def check_stream_source(cfg: DataConfig) -> list[str]:
    """What `leankd validate` finds wrong with a streamed source without a pass over it: every shard there (or the
    dataset's splits and columns), the first sample of each split with an image and a label. A source not on this
    machine at all is listed as not checked (the recipe may be meant for another one)."""
    stream = cfg.stream or StreamConfig()
    location = cfg.source.split(":", 1)[1]
    if stream_kind(cfg.source) == "webdataset":
        if not any(Path(p).expanduser().is_file() for p in shards.expand_braces(location)):
            return [f"data.source {cfg.source!r}: no shard found from {Path.cwd()} (the data was not read; `leankd "
                    "run` needs it there)"]
        for name, pattern in (("train", location), ("val", stream.val), ("test", stream.test)):
            if pattern:
                shards.first_sample(shards.shard_paths(pattern, f"{name} shards"), f"{name} data")
        return [f"data.source {cfg.source!r}: only the first sample of each split was read (the label pass of "
                "`leankd run` reads every sample's label)"]
    from ..data import hfstream
    from ..errors import MissingPackageError

    if not Path(location).expanduser().exists():
        return [f"data.source {cfg.source!r}: not found from {Path.cwd()} (the data was not read; `leankd run` needs "
                "it there)"]
    try:
        hfstream.require_datasets()
    except MissingPackageError as e:
        return [str(e)]
    for name, split in (("train", stream.split), ("val", stream.val), ("test", stream.test)):
        if not split:
            continue
        what = f"{name} data"
        ds, names = hfstream.prepare(hfstream.open_stream(location, split, what), stream.image_column,
                                     stream.label_column, what)
        row = next(iter(ds), None)
        if row is None:
            raise DataError(f"{what}: hf-stream split {split!r} has no examples")
        base = Path(location).expanduser()
        hfstream.encoded(row[stream.image_column], base if base.is_dir() else base.parent, what)
        hfstream.label_of(row[stream.label_column], {n: i for i, n in enumerate(names)} if names and isinstance(
            row[stream.label_column], str) else None, None, what)
    return [f"data.source {cfg.source!r}: only the first example of each split was read"]
