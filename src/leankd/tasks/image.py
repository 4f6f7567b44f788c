"""Image classification: uint8 images live on the training device; crop/flip/normalize run there, batched."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..data.augment import ImageAugment
from ..data.images import channel_stats, load_images, stratified_split
from ..errors import DataError
from ..recipe import DataConfig
from .base import TensorTask


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "leankd"


def build_image_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> TensorTask:
    if cfg.in_memory is False:
        raise DataError(
            "data.in_memory: false (streaming from disk) is not implemented yet for image tasks; "
            "use in_memory: auto (images are held as uint8, 50k CIFAR images take 150 MB)"
        )
    source = load_images(cfg.source, image_size=cfg.image_size, cache_dir=cfg.cache_dir or default_cache_dir())
    images, labels = source.train.images, source.train.labels
    notes = []
    if cfg.limit_train is not None and cfg.limit_train < len(labels):
        keep, _ = stratified_split(labels, 1.0 - cfg.limit_train / len(labels), seed)
        images, labels = images[keep], labels[keep]
        notes.append(f"train split limited to {len(labels)} images (data.limit_train)")
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, seed)
    splits = {"train": (images[train_idx], labels[train_idx])}
    if len(val_idx):
        splits["val"] = (images[val_idx], labels[val_idx])
    if source.test is not None:
        splits["test"] = (source.test.images, source.test.labels)

    eval_split = cfg.eval_split
    if eval_split == "test" and "test" not in splits:
        if "val" not in splits:
            raise DataError(
                f"data.source {cfg.source!r} has no test split and data.val_fraction is 0, so nothing is left to "
                "evaluate on: set data.val_fraction > 0 or provide train/ and test/ folders"
            )
        eval_split = "val"
        notes.append("the source has no test split: the report is measured on the held-out validation split")
    if eval_split == "val" and "val" not in splits:
        raise DataError("data.eval_split is 'val' but data.val_fraction is 0: set data.val_fraction > 0")

    if (cfg.mean is None) != (cfg.std is None):
        raise DataError("data.mean and data.std go together: give both or neither (default: computed from train)")
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else channel_stats(splits["train"][0])
    augment = ImageAugment(
        crop_padding=cfg.augment.crop_padding,
        hflip=cfg.augment.hflip,
        mean=mean,
        std=std,
        pad_mode="reflect" if cfg.augment.pad_mode == "reflect" else "constant",
        channels_last=channels_last,
    )
    info = {
        "source": cfg.source,
        "eval_split": eval_split,
        "eval_size": len(splits[eval_split][1]),
        "image_size": list(images.shape[-2:]),
        "mean": [round(float(m), 4) for m in mean],
        "std": [round(float(s), 4) for s in std],
        "fingerprint": getattr(source, "fingerprint", None),
    }
    task = TensorTask(splits, num_classes=len(source.classes), class_names=list(source.classes),
                      transform=augment, device=device, info=info)
    task.kind = "image_classification"
    task.eval_split = eval_split
    task.notes += notes
    return task
