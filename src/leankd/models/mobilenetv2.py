"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

As in chenyaofo/pytorch-cifar-models: the stem and the first stride-2 stage run at
stride 1, so a 32x32 image ends as a 4x4 map instead of 1x1. Channel rounding follows
torchvision (multiples of 8; the 1280-wide last conv never shrinks below width 1.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leankd.errors import ModelError
from leankd.models._init import init_weights
from leankd.models.registry import register_model

# expansion t, output channels c, repeats n, first stride s
_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in ImageNet MobileNetV2
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor` without dropping more than 10% (TF reference rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Stem + inverted-residual stages + 1x1 conv to `num_features` + pool + dropout + linear."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
            raise ModelError(f"MobileNetV2 width_mult must be a positive number, got {width_mult!r}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"MobileNetV2 dropout must be in [0, 1), got {dropout}")
        in_channels = _make_divisible(32 * width_mult)
        self.num_classes = num_classes
        self.num_features = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_channels, stride=1)]  # stride 2 on ImageNet
        for t, c, n, s in _SETTING:
            out_channels = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        layers.append(_conv_bn_relu6(in_channels, self.num_features, kernel=1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)  # torchvision / chenyaofo head init
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, dropout)


@register_model
def mobilenetv2_x0_5(num_classes: int = 10, dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(num_classes, 0.5, dropout)
