"""Image classification sources: one call, `load_images(source)`, turns the demo, an ImageFolder directory, a tar of
one, or a local torchvision dataset into uint8 tensors in memory (optionally cached on disk after the first decode)."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path

import torch
from torch import Tensor

from leankd.data.cache import cache_file, cache_key, decode_classes, encode_classes, load_cached, save_cached
from leankd.data.decode import Decoder
from leankd.data.readers import FolderReader, TarReader, is_tar_path
from leankd.data.split import stratified_split
from leankd.data.stats import channel_stats
from leankd.data.stream import ImageFolderStream
from leankd.data.torchvision_local import TorchvisionReader
from leankd.errors import DataError

__all__ = ["ImageSource", "ImageSplit", "ImageFolderStream", "channel_stats", "load_images", "stratified_split"]

DEMO = "demo"


@dataclass
class ImageSplit:
    """Images as uint8 [N,3,H,W] (4x smaller than float, so whole datasets fit on the device) and int64 labels."""

    images: Tensor
    labels: Tensor

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != torch.uint8:
            raise DataError(f"ImageSplit.images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"ImageSplit has {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ImageSource:
    """A loaded dataset. `fingerprint` is a sha256 of the decoded content (classes, pixels, labels): equal data from
    a folder or a tar has the same fingerprint, so downstream caches (e.g. teacher logits) can key on it."""

    classes: list[str]
    train: ImageSplit
    test: ImageSplit | None
    origin: str
    fingerprint: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def load_images(source: str | os.PathLike, *, image_size: int | None = None, cache_dir: str | Path | None = None) -> ImageSource:
    """Load `source` ('demo', a folder, a .tar/.tar.gz/.tgz, or 'torchvision:NAME:ROOT') into memory.

    With `image_size`, every image is resized (antialiased) to image_size x image_size; without it all images must
    already share one size. With `cache_dir`, decoded tensors are stored there and reused while the source is
    unchanged (same path, size and mtime)."""
    decoder = Decoder(image_size)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data source must be a non-empty string ('demo', a folder, a tar, or "
                        f"'torchvision:NAME:ROOT'), got {source!r}.")
    if source == DEMO:
        with as_file(files("leankd") / "demo" / "cifar10-demo.tar.gz") as path:
            return _load(TarReader(Path(path)), DEMO, decoder, cache_dir)
    reader, origin = _reader_for(source)
    return _load(reader, origin, decoder, cache_dir)


def _reader_for(source: str):
    if source.startswith("torchvision:"):
        parts = source.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise DataError(f"torchvision source {source!r} must look like 'torchvision:CIFAR10:/path/to/root'.")
        root = Path(parts[2]).expanduser()
        reader = TorchvisionReader(parts[1], root)
        return reader, f"torchvision:{reader.name}:{root}"
    path = Path(source).expanduser()
    if path.is_dir():
        return FolderReader(path), f"folder:{path.resolve()}"
    if path.is_file():
        if is_tar_path(path):
            return TarReader(path), f"tar:{path.resolve()}"
        raise DataError(f"data source {path} is a file but not a tar archive; give an ImageFolder directory or a "
                        f".tar/.tar.gz/.tgz of one (zip is not supported: extract it or re-pack it as tar).")
    raise DataError(f"data source {source!r} does not exist (looked for {path.absolute()}). Give 'demo', an "
                    f"ImageFolder directory, a .tar/.tar.gz of one, or 'torchvision:NAME:ROOT'.")


def _load(reader, origin: str, decoder: Decoder, cache_dir: str | Path | None) -> ImageSource:
    if cache_dir is None:
        return _build(*reader.read(decoder), origin)
    key = cache_key(reader.identity(), decoder.image_size)
    path = cache_file(cache_dir, key)
    hit = load_cached(path, key)
    if hit is not None:
        meta, t = hit
        test = ImageSplit(t["test_images"], t["test_labels"]) if "test_images" in t else None
        return ImageSource(decode_classes(meta["classes"]), ImageSplit(t["train_images"], t["train_labels"]), test,
                           origin, meta["fingerprint"])
    src = _build(*reader.read(decoder), origin)
    tensors = {"train_images": src.train.images, "train_labels": src.train.labels}
    if src.test is not None:
        tensors.update(test_images=src.test.images, test_labels=src.test.labels)
    try:
        save_cached(path, key, {"classes": encode_classes(src.classes), "origin": origin,
                                "fingerprint": src.fingerprint}, tensors)
    except OSError as e:  # the data is loaded; a read-only cache dir only costs the next run a re-decode
        warnings.warn(f"cannot write the image cache {path} ({e}); continuing without it. Pick a writable cache_dir.")
    return src


def _build(classes: list[str], splits: dict[str, tuple[Tensor, Tensor]], origin: str) -> ImageSource:
    train = ImageSplit(*splits["train"])
    test = ImageSplit(*splits["test"]) if "test" in splits else None
    return ImageSource(classes, train, test, origin, content_fingerprint(classes, train, test))


def content_fingerprint(classes: list[str], train: ImageSplit, test: ImageSplit | None) -> str:
    """sha256 over class names, shapes, pixels and labels: stable across machines, paths and container formats."""
    h = hashlib.sha256(json.dumps(classes).encode())
    for split in (train, test):
        if split is None:
            h.update(b"no-test")
            continue
        h.update(json.dumps(list(split.images.shape)).encode())
        h.update(split.images.contiguous().numpy().data)
        h.update(split.labels.contiguous().numpy().data)
    return h.hexdigest()
