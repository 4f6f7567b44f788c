"""Small VGGs with BatchNorm for CIFAR, as RepDistiller's vgg8_bn / vgg11_bn / vgg13_bn.

Five conv blocks (64, 128, 256, 512, 512 channels); a 32x32 input is max-pooled after
the first three only (RepDistiller skips the fourth pool below 64px), so the last block
sees a 4x4 map, which is globally averaged into one 512-wide linear classifier. Convs keep
their bias (redundant before BN) so parameter counts match the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from leankd.models._init import init_weights
from leankd.models.registry import register_model

# Convs per block; block widths are fixed at (64, 128, 256, 512, 512).
_WIDTHS = (64, 128, 256, 512, 512)
_POOL_AFTER = (0, 1, 2)  # blocks followed by a 2x2 max-pool
_DEPTHS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
}


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class CifarVGG(nn.Module):
    """Conv-BN-ReLU blocks with max-pools, global average pool and a linear classifier."""

    def __init__(self, convs_per_block: Sequence[int], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for block, (width, convs) in enumerate(zip(_WIDTHS, convs_per_block)):
            for _ in range(convs):
                layers += _conv_bn_relu(in_channels, width)
                in_channels = width
            if block in _POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
        self.num_classes = num_classes
        self.num_features = in_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def vgg8(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(_DEPTHS["vgg8"], num_classes)


@register_model
def vgg11(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(_DEPTHS["vgg11"], num_classes)


@register_model
def vgg13(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(_DEPTHS["vgg13"], num_classes)
