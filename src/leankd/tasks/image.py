"""Image classification. Datasets that fit in memory live as uint8 tensors on the training device with
crop/flip/normalize done there, batched; larger ImageFolder directories stream through a DataLoader whose
workers only decode, and their uint8 batches get the same on-device augmentation."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Subset

from ..data.augment import ImageAugment
from ..data.images import channel_stats, load_images
from ..data.readers import FolderReader
from ..data.stream import ImageFolderStream
from ..errors import DataError
from ..recipe import DataConfig
from .base import LoaderTask, Task, TensorTask
from .splits import choose_eval_split, example_split_statement, limit_test, split_train

HFLIP_DEFAULT_WARNING = ("horizontal flip is on only because it is the default: it mirrors digits, letters and other "
                         "text-like images into different symbols; set data.augment.hflip: false for such data (or "
                         "true to keep it and silence this warning)")

IN_MEMORY_LIMIT_BYTES = 4 * 1024**3  # `in_memory: auto` streams image folders whose uint8 pixels exceed this
STATS_SAMPLE = 2000  # images used to compute mean/std when streaming


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "leankd"


def build_image_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> Task:
    if _should_stream(cfg):
        return _build_stream_task(cfg, device, seed, channels_last)
    return _build_memory_task(cfg, device, seed, channels_last)


def _should_stream(cfg: DataConfig) -> bool:
    if cfg.in_memory is True:
        return False
    is_dir = Path(cfg.source).expanduser().is_dir()
    if cfg.in_memory is False:
        if not is_dir:
            raise DataError(f"data.in_memory: false streams from an ImageFolder directory, but {cfg.source!r} is not "
                            "one: extract the archive, or use in_memory: auto")
        return True
    if not is_dir:
        return False
    train = ImageFolderStream(cfg.source, split="train", image_size=cfg.image_size)
    return len(train) * train[0][0].numel() > IN_MEMORY_LIMIT_BYTES


def _augment(cfg: DataConfig, train_images: torch.Tensor, channels_last: bool) -> ImageAugment:
    if (cfg.mean is None) != (cfg.std is None):
        raise DataError("data.mean and data.std go together: give both or neither (default: computed from train)")
    size = min(train_images.shape[-2:])
    if cfg.augment.pad_mode == "reflect" and cfg.augment.crop_padding >= size:
        raise DataError(f"data.augment.crop_padding = {cfg.augment.crop_padding} needs images larger than that "
                        f"({size}px here) for reflect padding: lower it or set data.augment.pad_mode: zeros")
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else channel_stats(train_images)
    return ImageAugment(crop_padding=cfg.augment.crop_padding, hflip=cfg.augment.hflip, mean=mean, std=std,
                        pad_mode="reflect" if cfg.augment.pad_mode == "reflect" else "constant",
                        channels_last=channels_last)


def _info(cfg: DataConfig, augment: ImageAugment, image_shape, fingerprint: Optional[str], streamed: bool,
          train_images: Optional[torch.Tensor] = None, split: Optional[dict] = None) -> dict:
    return {"source": cfg.source, "image_size": list(image_shape[-2:]),
            "mean": [round(m, 4) for m in augment.mean], "std": [round(s, 4) for s in augment.std],
            "fingerprint": fingerprint, "storage": "streamed from disk" if streamed else "in memory on the device",
            "preprocessing": _preprocessing(cfg, train_images), **({"split_method": split} if split else {})}


def _deploy_info(augment: ImageAugment, image_shape) -> dict:
    """What a user of an exported image model must do to a picture first (Task.deploy_metadata): the models read
    float NCHW RGB tensors normalized as in `data.augment.normalize`."""
    return {"input_layout": "NCHW (batch, channel, height, width), RGB",
            "input_size": list(image_shape[-2:]),
            "normalization": "x = (pixel / 255 - mean) / std per channel",
            "mean": list(augment.mean), "std": list(augment.std)}


def _preprocessing(cfg: DataConfig, train_images: Optional[torch.Tensor]) -> list[dict]:
    """What the images went through before a model saw them (report.schema.PreprocessingStep). `by_default` says the
    recipe did not ask for it, so a default that does not suit the data (hflip on digits) is called out."""
    aug = cfg.augment
    asked = aug.model_fields_set if "augment" in cfg.model_fields_set else set()
    steps = []
    if cfg.image_size is not None:
        size = cfg.image_size
        steps.append({"what": f"every image resized to {size}x{size} (antialiased; data.image_size)"})
    if train_images is not None and len(train_images) and train_images.shape[1] == 3:
        gray = _gray_count(train_images)
        if gray:
            n = len(train_images)
            steps.append({"what": f"{gray} of {n} training images checked ({100 * gray / n:.3g}%) are grayscale "
                                  "replicated to 3 RGB channels (the models see three identical channels)"})
    if aug.crop_padding > 0:
        steps.append({"what": f"training augmentation: random crop after {aug.pad_mode} padding by "
                              f"{aug.crop_padding} px", "by_default": "crop_padding" not in asked})
    if aug.hflip:
        default = "hflip" not in asked
        steps.append({"what": "training augmentation: random horizontal flip (p=0.5)", "by_default": default,
                      **({"warning": HFLIP_DEFAULT_WARNING} if default else {})})
    return steps


def _gray_count(images: torch.Tensor, chunk: int = 4096) -> int:
    """How many uint8 [N, 3, H, W] images have three equal channels (grayscale stored or decoded as RGB)."""
    gray = 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk]
        gray += int(((x[:, 0] == x[:, 1]) & (x[:, 1] == x[:, 2])).flatten(1).all(1).sum())
    return gray


def _build_memory_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> TensorTask:
    source = load_images(cfg.source, image_size=cfg.image_size, cache_dir=cfg.cache_dir or default_cache_dir())
    images, labels = source.train.images, source.train.labels
    notes: list[str] = []
    train_idx, val_idx = split_train(labels, cfg, seed, notes)
    splits = {"train": (images[train_idx], labels[train_idx])}
    if len(val_idx):
        splits["val"] = (images[val_idx], labels[val_idx])
    if source.test is not None:
        test_idx = limit_test(source.test.labels, cfg, seed, notes)
        splits["test"] = (source.test.images[test_idx], source.test.labels[test_idx])
    eval_split = choose_eval_split(cfg, "val" in splits, "test" in splits, notes)
    augment = _augment(cfg, splits["train"][0], channels_last)
    split = example_split_statement({k: len(v[1]) for k, v in splits.items()}, source.test is not None, "images")
    task = TensorTask(splits, num_classes=len(source.classes), class_names=list(source.classes), transform=augment,
                      device=device, info=_info(cfg, augment, images.shape, source.fingerprint, streamed=False,
                                                train_images=splits["train"][0], split=split))
    task.kind, task.eval_split = "image_classification", eval_split
    task.deploy_info = _deploy_info(augment, images.shape)
    task.notes += notes
    return task


def _folder_fingerprint(root: str) -> str:
    """Cheap identity of a streamed folder (paths, sizes, mtimes) so a changed dataset is never reused silently."""
    import hashlib

    return hashlib.sha256(FolderReader(Path(root).expanduser()).identity().encode()).hexdigest()[:16]


def _build_stream_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> LoaderTask:
    if cfg.limit_test is not None:
        raise DataError("data.limit_test works on in-memory image data: set data.in_memory: true or remove it")
    full = ImageFolderStream(cfg.source, split="train", image_size=cfg.image_size)
    notes: list[str] = []
    train_idx, val_idx = split_train(full.labels, cfg, seed, notes)
    datasets = {"train": Subset(full, train_idx.tolist())}
    if len(val_idx):
        datasets["val"] = Subset(full, val_idx.tolist())
    try:
        test = ImageFolderStream(cfg.source, split="test", image_size=cfg.image_size)
        if test.classes != full.classes:
            raise DataError(f"{cfg.source}: train and test class folders differ ({full.classes} vs {test.classes})")
        datasets["test"] = test
    except DataError as e:
        if "has no 'test' split" not in str(e):
            raise
    eval_split = choose_eval_split(cfg, "val" in datasets, "test" in datasets, notes)
    sample_idx = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(seed))[:STATS_SAMPLE]]
    sample = torch.stack([full[int(i)][0] for i in sample_idx])
    augment = _augment(cfg, sample, channels_last)
    task = LoaderTask(datasets, num_classes=len(full.classes), class_names=list(full.classes), transform=augment,
                      device=device, num_workers=cfg.num_workers,
                      info=_info(cfg, augment, sample.shape, _folder_fingerprint(cfg.source), streamed=True,
                                 train_images=sample,
                                 split=example_split_statement({k: len(v) for k, v in datasets.items()},
                                                               "test" in datasets, "images")))
    task.kind, task.eval_split = "image_classification", eval_split
    task.deploy_info = _deploy_info(augment, sample.shape)
    task.notes += notes + ["images were streamed from disk with a DataLoader (data.in_memory)"]
    return task
