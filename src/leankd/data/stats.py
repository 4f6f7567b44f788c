"""Per-channel mean/std of uint8 images, for normalization. Sums run in float64 over chunks, so 50k images cost a
chunk's worth of memory, not a float copy of the whole dataset."""
from __future__ import annotations

import torch
from torch import Tensor

from leankd.errors import DataError


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 [N,C,H,W] images, in 0..1 units (population std over all pixels)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"channel_stats needs a non-empty [N,C,H,W] image tensor, got shape {tuple(images.shape)}.")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=images.device)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    return tuple((mean / scale).tolist()), tuple((var.sqrt() / scale).tolist())
