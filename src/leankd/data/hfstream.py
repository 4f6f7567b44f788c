"""A local Hugging Face dataset read as a stream: `data.source: hf-stream:PATH` (`datasets.load_dataset(...,
streaming=True)`).

PATH is a data file (.parquet, .jsonl/.json, .csv: its one split is `train`) or a folder `datasets` understands
(split files such as train.parquet + test.parquet, data/train-*.parquet, or an imagefolder). Nothing is downloaded:
the hub is switched off (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) before `datasets` is imported here, and a PATH that is
not on disk is an error. Images are the column's encoded bytes (an `Image` feature, raw bytes, or a file path),
decoded by leankd's own decoders, so a sample decodes to the same tensor as from an ImageFolder.

`datasets` is the optional extra `leankd[stream]`: about 280 MB installed with what it pulls in (pyarrow 170 MB,
pandas 85 MB; tested with datasets 5.2). Without it a recipe that names hf-stream stops before anything is built,
naming the extra.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import get_worker_info

from leankd.data.decode import Decoder
from leankd.data.shards import PassStream, RankShare, shuffled
from leankd.errors import DataError, MissingPackageError

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def require_datasets() -> Any:
    """The `datasets` module, offline, or a MissingPackageError naming the extra."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise MissingPackageError("data.source hf-stream: reads with the Hugging Face `datasets` package, which is not "
                                  "installed: pip install 'leankd[stream]' (or pip install datasets)") from None
    return datasets


def open_stream(path: str, split: str, what: str) -> Any:
    """`datasets.IterableDataset` of one split of the local dataset at `path`."""
    datasets = require_datasets()
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what}: hf-stream:{path} not found (looked for {p.absolute()}): give a local .parquet/"
                        ".jsonl/.csv file or a dataset folder (nothing is downloaded)")
    try:
        if p.is_file():
            builder = FILE_BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise DataError(f"{what}: hf-stream:{path}: a {p.suffix or 'suffix-less'} file; give a "
                                f"{', '.join(FILE_BUILDERS)} file or a dataset folder")
            if split != "train":
                raise DataError(f"{what}: hf-stream:{path} is one file, whose only split is 'train', not {split!r}: "
                                "give a folder with a file per split (train.parquet, test.parquet) to name splits")
            return datasets.load_dataset(builder, data_files={"train": str(p)}, split="train", streaming=True)
        return datasets.load_dataset(str(p), split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of `datasets` to open local files is a data problem
        first = str(e).splitlines()[0][:300] if str(e) else e.__class__.__name__
        raise DataError(f"{what}: hf-stream:{path} split {split!r} cannot be read ({first}): check the split name "
                        "(data.stream.split / test / val) and the folder's files") from None


def prepare(ds: Any, image_column: str, label_column: str, what: str) -> tuple[Any, Optional[list[str]]]:
    """The stream with its image column left encoded, and the class names of a ClassLabel label column (else None);
    a missing column is an error naming the columns there are."""
    datasets = require_datasets()
    features = ds.features
    if features is not None:
        for role, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in features:
                raise DataError(f"{what}: the dataset has no column {column!r} (data.stream.{role}); its columns: "
                                f"{', '.join(features)}")
        if isinstance(features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        label = features[label_column]
        if isinstance(label, datasets.ClassLabel):
            return ds, list(label.names)
    return ds, None


def encoded(value: Any, base: Path, what: str) -> tuple[str, torch.Tensor]:
    """(a name for messages, the encoded bytes) of one image cell: {'bytes', 'path'}, raw bytes, or a path."""
    path = None
    if isinstance(value, dict):
        if value.get("bytes"):
            return value.get("path") or "image", _tensor(value["bytes"])
        path = value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        return "image", _tensor(value)
    elif isinstance(value, str):
        path = value
    if not path:
        raise DataError(f"{what}: an image cell is a {type(value).__name__}, not encoded image bytes or a file path: "
                        "store the image's PNG/JPEG bytes (an Image feature) or its path")
    file = Path(path) if Path(path).is_absolute() else base / path
    try:
        return str(file), _tensor(file.read_bytes())
    except OSError as e:
        raise DataError(f"{what}: image file {file} cannot be read ({e.strerror or e}): fix the path in the "
                        "dataset") from None


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def label_of(value: Any, index: Optional[dict], num_classes: Optional[int], what: str) -> int:
    if value is None:
        raise DataError(f"{what}: an example has no label (None in the label column): label every example or "
                        "remove it")
    if index is not None:
        if value not in index:
            raise DataError(f"{what}: label {value!r} is not one of the classes {sorted(index)}")
        return index[value]
    if isinstance(value, str):
        raise DataError(f"{what}: the label {value!r} is a class name, and class names need the label pass: remove "
                        "data.stream.steps_per_epoch, or use class indices")
    label = int(value)
    if num_classes is not None and not 0 <= label < num_classes:
        raise DataError(f"{what}: label {label} is outside the {num_classes} classes (data.stream.num_classes)")
    return label


def scan_labels(ds: Any, label_column: str, what: str) -> list:
    """Every label of one pass (the label column only): counts the examples and finds the classes."""
    labels = []
    for row in ds.select_columns([label_column]):
        if row[label_column] is None:
            raise DataError(f"{what}: example {len(labels)} has no label: label every example or remove it")
        labels.append(row[label_column])
    if not labels:
        raise DataError(f"{what}: the split has no examples")
    return labels


class HFImageStream(PassStream):
    """(uint8 [3, H, W] image, class index) examples of a `datasets` stream. `shuffle` > 0: a buffer of that many
    encoded rows, drawn from (seed, epoch) as for tar shards (`shards.shuffled`; not `datasets`' own shuffle, whose
    every pass ends in a 5 s sleep in datasets 5.2, `config.SLEEP_TIME_ON_THREADS_SHUTDOWN`); `limit`: the stream's
    first N examples; DataLoader workers each read their part (`datasets.distributed.split_dataset_by_node`)."""

    def __init__(self, ds: Any, image_column: str, label_column: str, base: Path, image_size: Optional[int],
                 index: Optional[dict], num_classes: Optional[int], shuffle: int = 0, seed: int = 0,
                 limit: Optional[int] = None, length: Optional[int] = None, what: str = "train_data"):
        self.ds, self.image_column, self.label_column, self.base = ds, image_column, label_column, base
        self.image_size, self.index, self.num_classes = image_size, index, num_classes
        self.shuffle, self.seed, self.limit, self.length, self.what = shuffle, seed, limit, length, what
        self.epoch, self.share = 0, RankShare()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        ds = self.ds.take(self.limit) if self.limit is not None else self.ds
        info = get_worker_info()
        worker = 0
        if info is not None and info.num_workers > 1:
            from datasets.distributed import split_dataset_by_node

            ds, worker = split_dataset_by_node(ds, rank=info.id, world_size=info.num_workers), info.id
        rows = iter(ds)
        if self.shuffle:
            rows = shuffled(rows, self.shuffle, random.Random(f"{self.seed}/{self.epoch}/{worker}"))
        decoder = Decoder(self.image_size)
        for position, row in enumerate(rows):
            label = label_of(row[self.label_column], self.index, self.num_classes, self.what)
            if not self.share.decodes(position):
                yield self.share.stand_in(), label
                continue
            name, data = encoded(row[self.image_column], self.base, self.what)
            yield decoder.decode([name], [data])[0], label
