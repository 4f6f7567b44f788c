"""How far a model downsamples its input, measured by running it: the report's at-chance flag names "input smaller
than the model's total stride" as a cause (28x28 digits into a stride-32 ImageNet network leave a 1x1 feature map
after the third stage, so the last stages see no spatial structure at all).

The stride is read from shapes, not from module attributes: forward hooks record every 4-D output, and the last
feature map is the smallest one above 1x1 that is not a global (adaptive) pooling. At the data's own size a collapsed
map (1x1 or 2x2) hides how much further the network would have downsampled, so the model is then also run once on a
larger probe input; models that only accept their training size fall back to the data's size (a lower bound on the
stride). Maps that are not collapsed give the stride at the data's size, which costs one small forward.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

PROBE_SIZE = 128  # spatial size of the large probe input: every stride up to 64 leaves at least 2x2


def _feature_sizes(model: nn.Module, inputs: Tensor, forward: Callable[[nn.Module, Any], Tensor]) -> list[tuple]:
    """Spatial sizes (h, w) of every 4-D output of a leaf module except adaptive poolings, in call order."""
    sizes: list[tuple] = []

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4 and not isinstance(
                module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            sizes.append(tuple(out.shape[-2:]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return sizes


def probe_model(model: nn.Module, example: Any, forward: Callable[[nn.Module, Any], Tensor]) -> Optional[dict]:
    """`report.schema.ModelProbe` of `model` for image-like inputs ([B, C, H, W] tensors), else None.

    `total_stride`: input size over the last feature map's size on a PROBE_SIZE input, rounded to a power of two
    (or the same ratio at the data's size when the model rejects the larger input)."""
    if not isinstance(example, Tensor) or example.dim() != 4 or not example.is_floating_point():
        return None
    was_training = model.training
    model.eval()
    try:
        x = example[:1]
        h, w = int(x.shape[-2]), int(x.shape[-1])
        try:
            own = _feature_sizes(model, x, forward)
        except Exception:  # noqa: BLE001 - a probe never costs a run its report
            return None
        bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        out: dict = {"input_size": [h, w], "batchnorm_layers": bn}
        if not own:
            return out
        probe, ref = own, h
        if min(s[0] for s in own) <= 2 and max(h, w) < PROBE_SIZE:  # maybe collapsed: how far would it go?
            big = torch.nn.functional.interpolate(x, size=(PROBE_SIZE, PROBE_SIZE), mode="nearest")
            try:
                probe, ref = _feature_sizes(model, big, forward), PROBE_SIZE
            except Exception:  # noqa: BLE001 - fixed-size models: the data's own size gives a lower bound
                pass
        # 1x1 maps after a global pooling (squeeze-excitation gates) are not feature maps: the smallest map above
        # 1x1 on the probe input is the last feature map; the same call at the data's size gives its size there
        spatial = [i for i, s in enumerate(probe) if s[0] * s[1] > 1] or list(range(len(probe)))
        last = min(spatial, key=lambda i: (probe[i][0] * probe[i][1], -i))
        stride = 2 ** max(0, round(math.log2(ref / probe[last][0])))
        feat = own[last] if len(own) == len(probe) else (math.ceil(h / stride), math.ceil(w / stride))
        out.update(feature_size=[int(feat[0]), int(feat[1])], total_stride=stride)
        return out
    finally:
        model.train(was_training)
