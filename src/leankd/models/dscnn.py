"""DS-CNN keyword spotter (Zhang et al. 2017, "Hello Edge"): a conv, depthwise-separable blocks, average pool.

Layer settings follow ARM's ML-KWS-for-MCU reference (`model_size_info` for DS-CNN S/M/L): S keeps stride 1
after the first conv; M and L run the first conv at stride 1 in frequency and stride the first DS block by 2.
Our input is `[B, n_mels, T]` (frequency first), so kernels and strides are written (freq, time): the paper's
10x4 (time x freq) first kernel is `(4, 10)` here. Padding is symmetric, (k - 1) // 2 per side: for the presets'
40 x 98 inputs that gives TF "same" output sizes (ceil(input / stride)), but TF pads even kernels asymmetrically,
so border values are not bit-identical to a TF model.

The paper's "38.6K" for DS-CNN S is *memory* (8-bit weights + activations, in bytes) on 10 MFCCs x 49 frames,
not parameters; on 40 log-mels x 98 frames the same layers have 23.2k parameters at 12 classes. The larger input
makes every DS-CNN far heavier than the CRNNs. Params and MACs (FlopCounterMode) for 35 classes on `[1, 40, 98]`:

    preset    params    MACs     activations (fp32, batch 1)
    dscnn_s    24,675   20.8M    1.25 MB
    dscnn_m   140,559   75.4M    2.69 MB
    dscnn_l   420,107   217.8M   4.32 MB
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from leankd.errors import ModelError
from leankd.models._init import init_weights
from leankd.models.crnn import _pair
from leankd.models.registry import register_model


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: tuple[int, int], stride: tuple[int, int], groups: int = 1
                  ) -> nn.Sequential:
    padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)  # "same" for odd kernels, TF-like for even ones
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class DSBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (no residual, as in the paper)."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(channels, channels, (3, 3), (stride, stride), groups=channels)
        self.pointwise = _conv_bn_relu(channels, channels, (1, 1), (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DSCNN(nn.Module):
    """`[B, n_mels, T]` -> first conv -> `num_blocks` DS blocks -> global average pool -> dropout -> `classifier`."""

    def __init__(
        self,
        num_classes: int,
        n_mels: int = 40,
        channels: int = 64,
        num_blocks: int = 4,
        first_kernel: Sequence[int] = (4, 10),
        first_stride: Sequence[int] = (2, 2),
        first_block_stride: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        for name, value in (("n_mels", n_mels), ("channels", channels), ("num_blocks", num_blocks),
                            ("first_block_stride", first_block_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"DS-CNN {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"DS-CNN dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.n_mels = n_mels
        self.num_features = channels
        self.stem = _conv_bn_relu(1, channels, _pair("first_kernel", first_kernel), _pair("first_stride", first_stride))
        self.blocks = nn.Sequential(*[DSBlock(channels, first_block_stride if i == 0 else 1)
                                      for i in range(num_blocks)])
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        if not is_fx_symbolic_tracing() and (feats.dim() != 3 or feats.shape[1] != self.n_mels):  # fx: see crnn.py
            raise ModelError(f"DS-CNN expects log-mel features [B, n_mels, T] (n_mels={self.n_mels}), "
                             f"got shape {tuple(feats.shape)}")
        return self.blocks(self.stem(feats.unsqueeze(1)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(feats))


@register_model
def dscnn(
    num_classes: int = 35,
    n_mels: int = 40,
    channels: int = 64,
    num_blocks: int = 4,
    first_kernel: Sequence[int] = (4, 10),
    first_stride: Sequence[int] = (2, 2),
    first_block_stride: int = 1,
    dropout: float = 0.2,
) -> DSCNN:
    """General DS-CNN; the defaults are DS-CNN S."""
    return DSCNN(num_classes, n_mels=n_mels, channels=channels, num_blocks=num_blocks, first_kernel=first_kernel,
                 first_stride=first_stride, first_block_stride=first_block_stride, dropout=dropout)


@register_model
def dscnn_s(num_classes: int = 35, n_mels: int = 40, dropout: float = 0.2) -> DSCNN:
    """Hello Edge DS-CNN S: 64 channels, 4 DS blocks."""
    return DSCNN(num_classes, n_mels=n_mels, channels=64, num_blocks=4, dropout=dropout)


@register_model
def dscnn_m(num_classes: int = 35, n_mels: int = 40, dropout: float = 0.2) -> DSCNN:
    """Hello Edge DS-CNN M: 172 channels, 4 DS blocks, the first at stride 2."""
    return DSCNN(num_classes, n_mels=n_mels, channels=172, num_blocks=4, first_stride=(1, 2),
                 first_block_stride=2, dropout=dropout)


@register_model
def dscnn_l(num_classes: int = 35, n_mels: int = 40, dropout: float = 0.2) -> DSCNN:
    """Hello Edge DS-CNN L: 276 channels, 5 DS blocks, the first at stride 2."""
    return DSCNN(num_classes, n_mels=n_mels, channels=276, num_blocks=5, first_stride=(1, 2),
                 first_block_stride=2, dropout=dropout)
