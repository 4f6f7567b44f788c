"""Where a model and its inputs live. Inputs may be a tensor, a dict of tensors (text tasks) or a tuple/list of
them, so every helper here walks nested containers instead of assuming a bare tensor."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def to_device(obj: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor inside `obj` (tensor, dict, list, tuple) to `device`.

    With `dtype`, only floating-point tensors are cast, so integer token ids and masks keep their type.
    """
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple: rebuild with positional args
        return type(obj)(*(to_device(v, device, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, dtype) for v in obj)
    return obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor found in `obj` (depth first, dict insertion order), or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def batch_size_of(inputs: Any) -> int | None:
    """Dim 0 of the first tensor in `inputs`; None when there is no tensor or it is a scalar."""
    t = first_tensor(inputs)
    return int(t.shape[0]) if t is not None and t.dim() > 0 else None


def model_device(model: nn.Module, inputs: Any = None) -> torch.device:
    """The device of the model's first parameter (or buffer), else of the inputs, else CPU."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    t = first_tensor(inputs)
    return t.device if t is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so a timer or counter read sees it finished; no-op on CPU."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` on CPU with floating-point parameters and buffers in fp32.

    Tensors are copied straight to CPU through deepcopy's memo, so copying a large GPU model never needs a second
    copy of it in GPU memory. Integer buffers (e.g. BatchNorm's `num_batches_tracked`) keep their dtype.
    """
    import copy

    def cpu(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu")
        return t.float() if t.is_floating_point() else t

    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(cpu(p).clone(), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = cpu(b).clone()
    return copy.deepcopy(model, memo)
