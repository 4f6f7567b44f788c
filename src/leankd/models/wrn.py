"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: pre-activation blocks, depth 6n+4.

Layout follows RepDistiller's wrn.py (the usual KD teacher/student source), so
wrn_40_2 -> wrn_16_2 results are comparable with the literature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leankd.errors import ModelError
from leankd.models._init import init_weights
from leankd.models.registry import register_model


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the shape changes, the 1x1 shortcut conv reads the pre-activated input, as in the
    reference implementation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """Stem conv + 3 stages of width (16, 32, 64) x widen_factor + BN-ReLU + pool + linear."""

    def __init__(self, depth: int, widen_factor: int = 1, dropout: float = 0.0, num_classes: int = 10) -> None:
        super().__init__()
        if not _is_int(depth) or depth < 10 or (depth - 4) % 6:
            raise ModelError(f"Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 28, 40, ...), got {depth!r}")
        if not _is_int(widen_factor) or widen_factor < 1:
            raise ModelError(f"Wide ResNet widen_factor must be a positive integer, got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"Wide ResNet dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.num_features = widths[3]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
        layers = [PreActBlock(in_channels, out_channels, stride, dropout)]
        layers += [PreActBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn(x))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def wrn(num_classes: int = 10, depth: int = 16, widen_factor: int = 1, dropout: float = 0.0) -> WideResNet:
    """Any WRN-depth-widen_factor, for sizes without a named variant."""
    return WideResNet(depth, widen_factor, dropout, num_classes)


@register_model
def wrn_16_1(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(16, 1, dropout, num_classes)


@register_model
def wrn_16_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(16, 2, dropout, num_classes)


@register_model
def wrn_40_1(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(40, 1, dropout, num_classes)


@register_model
def wrn_40_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(40, 2, dropout, num_classes)


@register_model
def wrn_40_4(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(40, 4, dropout, num_classes)


@register_model
def wrn_28_10(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    return WideResNet(28, 10, dropout, num_classes)
