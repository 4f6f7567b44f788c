"""Task kinds. `build_task` picks one from the recipe's `data.task`; each kind lives in its own file."""
from __future__ import annotations

import torch

from ..recipe import DataConfig
from .base import Batch, Task, TensorTask


def build_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> Task:
    if cfg.task == "image_classification":
        from .image import build_image_task

        return build_image_task(cfg, device, seed, channels_last=channels_last)
    raise ValueError(f"unknown task {cfg.task!r}")  # unreachable: the recipe schema restricts data.task


__all__ = ["Batch", "Task", "TensorTask", "build_task"]
