"""Batched image augmentation on the training device (airbench-style): uint8 batches in, normalized floats out,
with no per-sample Python work, so augmentation never starves a GPU. Randomness comes only from the given
`torch.Generator` (on the batch's device), so a seeded epoch is reproducible."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

PAD_MODES = ("reflect", "constant", "zeros")  # "zeros" is an alias of "constant" (zero padding)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None, mode: str = "reflect") -> Tensor:
    """Pad each image by `padding` (reflect or zeros) and take a random HxW window per sample.

    No padded copy is built: the window's row/column indices are mapped back into the image (reflected, or
    clamped and masked to zero) and gathered along H then W, two vectorized gathers for the whole batch."""
    if padding == 0:
        return x
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    b, c, h, w = x.shape
    if mode == "reflect" and (padding >= h or padding >= w):
        raise DataError(f"reflect padding {padding} needs images larger than that, got {h}x{w}; use mode='constant'")
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device) - padding  # [B,H] source rows, may fall outside [0,H)
    cols = dx + torch.arange(w, device=x.device) - padding  # [B,W]
    if mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        valid = None
    else:
        valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if valid is not None:
        out = out.masked_fill(~valid, 0)
    return out


def _reflect(idx: Tensor, n: int) -> Tensor:
    """Index of `idx` in a reflect-padded axis of length n (edge not repeated, like torch's 'reflect'); |pad| < n."""
    idx = idx.abs()
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability p (one draw per sample)."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """(x/255 - mean) / std per channel for uint8 x, as one fused multiply-add; low-precision dtypes are computed in
    fp32 and cast at the end."""
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise DataError(f"mean/std have {len(mean)}/{len(std)} values but the images have {x.shape[1]} channels")
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(device=x.device, dtype=work).view(1, -1, 1, 1)
    shift = (-m / s).to(device=x.device, dtype=work).view(1, -1, 1, 1)
    return torch.addcmul(shift, x.to(work), scale).to(dtype)


class ImageAugment:
    """uint8 batch -> model input. Training: random crop (padding `crop_padding`), random horizontal flip, normalize;
    evaluation: normalize only. Called as `augment(x, generator, train)` by the task's batch loop."""

    def __init__(
        self,
        crop_padding: int = 4,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pad_mode: str = "reflect",
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.pad_mode = pad_mode
        self.channels_last = bool(channels_last)
        self.dtype = dtype

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, train: bool = True) -> Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(f"ImageAugment expects a uint8 [B,C,H,W] batch, got {x.dtype} {tuple(x.shape)}")
        if train:
            x = random_crop(x, self.crop_padding, generator, mode=self.pad_mode)
            if self.hflip:
                x = random_hflip(x, generator)
        if self.channels_last:  # reorder the 1-byte input, not the float output
            x = x.contiguous(memory_format=torch.channels_last)
        out = normalize(x, self.mean, self.std, dtype=self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def __repr__(self) -> str:
        return (f"ImageAugment(crop_padding={self.crop_padding}, hflip={self.hflip}, mean={self.mean}, "
                f"std={self.std}, pad_mode={self.pad_mode!r}, channels_last={self.channels_last})")
