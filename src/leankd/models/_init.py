"""Shared weight initialisation for the built-in CIFAR families."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs and unit/zero norms, as in He et al. 2015.

    PyTorch's default conv init (kaiming-uniform with a=sqrt(5)) is tuned for neither ReLU
    nor residual nets; every reference CIFAR implementation overrides it like this.
    Linear layers keep PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
