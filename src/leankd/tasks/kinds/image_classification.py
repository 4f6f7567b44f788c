"""image_classification: an ImageFolder, a tar of one, torchvision:NAME:ROOT, or the bundled demo images."""
from __future__ import annotations

from ...core.taskkind import TaskKind, register_kind


def build(cfg, device, seed: int, channels_last: bool):
    from ..image import build_image_task

    return build_image_task(cfg, device, seed, channels_last=channels_last)


KIND = register_kind(TaskKind(
    "image_classification", build,
    refusals={"augment": "images and audio augment through data.augment"},
    summary="images in class folders; accuracy, per-class recall"))
