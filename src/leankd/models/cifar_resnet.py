"""CIFAR ResNets (He et al. 2016, sec. 4.2): three stages of BasicBlocks, depth 6n+2.

Shortcuts that change shape use a 1x1 conv + BN ("option B"), matching
chenyaofo/pytorch-cifar-models and RepDistiller so parameter counts and results compare
with the KD literature. The `x4` variants are RepDistiller's 4x-wide teacher/student pair.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leankd.errors import ModelError
from leankd.models._init import init_weights
from leankd.models.registry import register_model

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv + 3 stages (stride 1, 2, 2) + global average pool + linear classifier.

    `widths` = (stem, stage1, stage2, stage3) channels, as RepDistiller's `num_filters`.
    """

    def __init__(self, depth: int, widths: Sequence[int] = _NARROW, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 4:
            raise ModelError(f"CIFAR ResNet widths must be (stem, stage1, stage2, stage3), got {tuple(widths)}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = widths[3]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet8(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


@register_model
def resnet14(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


@register_model
def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


@register_model
def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


@register_model
def resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


@register_model
def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


@register_model
def resnet110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


@register_model
def resnet8x4(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


@register_model
def resnet32x4(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)


@register_model
def cifar_resnet(num_classes: int = 10, depth: int = 20, width: int = 16) -> CifarResNet:
    """Any CIFAR ResNet by its two knobs: depth 6n+2 and base width (stages width, 2x, 4x; 16 = resnet20's) -
    what a search varies to trade accuracy for MACs."""
    if width < 1:
        raise ModelError(f"cifar_resnet width must be a positive channel count, got {width}")
    return CifarResNet(depth, (width, width, 2 * width, 4 * width), num_classes)
