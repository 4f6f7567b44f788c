"""Half-precision (fp16 / bf16) copies of a model that the rest of leankd can call like the fp32 model:
fp32 inputs in, fp32 outputs out, half-precision weights and activations inside.

Normalization layers are kept in fp32 by default (`keep_norms_fp32=True`). Measured here on CPU (torch 2.14):
converting a whole CIFAR ResNet-20 to fp16 is harmless while every BatchNorm `running_var` stays below the fp16
maximum (65504): logits within 3e-3 of fp32. But a model trained on un-normalized inputs (pixels in 0..255 and
beyond, raw audio, unscaled tabular features) can have `running_var` above 65504, which becomes `inf` in fp16;
the BatchNorm then outputs its bias for every sample, so every input gets the same logits and the accuracy falls
to chance (measured: argmax agreement with fp32 went from 100 % to 0 %). Keeping the norms' parameters and
statistics in fp32 and running the norm itself in fp32 (its input is cast up, its output cast back to the half
dtype) fixes that (same model: logits within 2.2e-3 of fp32, 100 % agreement) for a negligible cost: norm
parameters are a tiny part of the weights, and the two casts are cheap next to the convolutions. bf16 has the fp32
exponent range and does not overflow, but is kept the same way for consistency.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from ..errors import ModelError
from ..train.checkpoint import save_weights, unwrap
from .errors import CompressionError

PRECISIONS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Layers whose statistics / reductions are fragile in half precision. `_NormBase` covers every BatchNorm
# (incl. SyncBatchNorm) and InstanceNorm.
NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)

_IO_DTYPE_ATTR = "_leankd_half_io_dtype"  # on a kept-fp32 norm: the dtype its output is cast back to
_META_FORMAT = "leankd_format"
_META_PRECISION = "leankd_precision"
_META_NORMS = "leankd_norms_fp32"


def _cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor inside `obj` (tensor, dict, list, tuple, namedtuple) to `dtype`; integer
    tensors (token ids, masks, labels) and non-tensors are returned unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, dict):
        items = {k: _cast_floating(v, dtype) for k, v in obj.items()}
        if type(obj) is dict:
            return items
        try:  # a dict subclass (e.g. a HuggingFace ModelOutput) keeps its type when it can be rebuilt
            return type(obj)(**items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_cast_floating(v, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floating(v, dtype) for v in obj)
    return obj


def _norm_pre_hook(module: nn.Module, args: tuple) -> tuple:
    return _cast_floating(args, torch.float32)


def _norm_post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
    return _cast_floating(output, getattr(module, _IO_DTYPE_ATTR))


class CastInputs(nn.Module):
    """Runs `inner` (a model converted to `dtype`, fp16 or bf16) on fp32 inputs and returns fp32 outputs.

    Floating-point tensors in the positional and keyword inputs (tensors, dicts, tuples, lists) are cast to `dtype`;
    integer tensors are left alone. Floating-point tensors in the output are cast to float32, so callers that
    compare logits, compute losses or take softmaxes need no special case. `.inner` is the converted model.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, norms_fp32: bool = True):
        super().__init__()
        if dtype not in PRECISIONS.values():
            raise CompressionError(f"CastInputs dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.inner = inner
        self.dtype = dtype
        self.norms_fp32 = norms_fp32

    @property
    def precision(self) -> str:
        return next(name for name, dt in PRECISIONS.items() if dt == self.dtype)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*_cast_floating(args, self.dtype), **_cast_floating(kwargs, self.dtype))
        return _cast_floating(out, torch.float32)

    def encode(self, *args: Any) -> Any:
        """Seq2seq models: the encoder half, cast like `forward` (decoding calls encode / step)."""
        return _cast_floating(self.inner.encode(*_cast_floating(args, self.dtype)), torch.float32)

    def step(self, *args: Any) -> Any:
        return _cast_floating(self.inner.step(*_cast_floating(args, self.dtype)), torch.float32)

    def extra_repr(self) -> str:
        return f"precision={self.precision}, norms_fp32={self.norms_fp32}"


def _dtype_of(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise CompressionError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _convert_(model: nn.Module, dtype: torch.dtype, keep_norms_fp32: bool) -> None:
    """In place: floating-point parameters and buffers to `dtype`, except normalization layers (kept fp32 and run
    in fp32 through a pair of casting hooks) when `keep_norms_fp32`.

    Converted module by module from the fp32 values, never `model.to(dtype)` then `norm.float()`: a running_var
    above 65504 would already be `inf` after the round trip through fp16. Parameters are converted through
    `.data`, so tied parameters stay one object."""
    for module in model.modules():
        is_norm = keep_norms_fp32 and isinstance(module, NORM_TYPES)
        target = torch.float32 if is_norm else dtype
        for p in module._parameters.values():
            if p is not None and p.is_floating_point() and p.dtype != target:
                p.data = p.data.to(target)
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != target:
                module._buffers[name] = b.to(target)
        if is_norm and not hasattr(module, _IO_DTYPE_ATTR):
            setattr(module, _IO_DTYPE_ATTR, dtype)
            module.register_forward_pre_hook(_norm_pre_hook)
            module.register_forward_hook(_norm_post_hook)


def _wrap(model: nn.Module, precision: str, keep_norms_fp32: bool, copy_model: bool) -> CastInputs:
    dtype = _dtype_of(precision)
    model = unwrap(model)
    if isinstance(model, CastInputs):
        raise CompressionError("the model is already a half-precision CastInputs wrapper; convert the fp32 model")
    if copy_model:
        try:
            model = copy.deepcopy(model)
        except Exception as e:  # e.g. hook-based weight_norm / pruning keeps non-leaf tensors as attributes
            raise CompressionError(
                f"the model cannot be copied for half-precision conversion ({type(e).__name__}: {e}); remove "
                "hook-based torch.nn.utils.weight_norm / pruning first (torch.nn.utils.remove_weight_norm, "
                "torch.nn.utils.prune.remove)") from None
    model.eval()
    _convert_(model, dtype, keep_norms_fp32)
    return CastInputs(model, dtype, keep_norms_fp32).eval()


def to_precision(model: nn.Module, precision: str, keep_norms_fp32: bool = True) -> CastInputs:
    """A half-precision copy of `model` ("fp16" or "bf16") in eval mode, wrapped so it takes fp32 inputs and
    returns fp32 outputs. The original model is not modified and the copy stays on the model's device.

    `keep_norms_fp32=True` (default) keeps BatchNorm/GroupNorm/LayerNorm/InstanceNorm/RMSNorm parameters and
    statistics in fp32 and computes them in fp32: an fp16 BatchNorm whose running_var exceeds 65504 (models fed
    un-normalized inputs) turns it into `inf` and collapses every prediction to one class (see the module
    docstring for the measurement). `keep_norms_fp32=False` converts everything, like `model.half()`.

    Speed: half precision pays off on GPUs (tensor cores) and halves the file. On a CPU without native fp16/bf16
    matrix units it is much SLOWER than fp32: measured on an AVX2-only CPU, 2 threads, ResNet-20 at batch 64,
    fp32 median 47 ms vs fp16 and bf16 >= 1.85 s per batch (about 40x slower; keeping the norms in fp32 is not
    the cost, all-half fp16 is as slow). Ship fp16/bf16 for GPUs; on CPU use fp32 or int8.
    """
    return _wrap(model, precision, keep_norms_fp32, copy_model=True)


def save_half(path: str | Path, wrapped: CastInputs) -> None:
    """Write the half-precision weights of `wrapped` (from `to_precision`) as one safetensors file, atomically.

    The tensors are stored in the dtypes they have in the model (fp16/bf16, norms fp32 when kept), so the file is
    about half the size of the fp32 weights file. The precision and the norm policy go in the file's metadata, so
    `load_half` needs only the model factory."""
    if not isinstance(wrapped, CastInputs):
        raise CompressionError(f"save_half expects the CastInputs model returned by to_precision, got "
                               f"{type(wrapped).__name__}")
    save_weights(path, wrapped.inner, metadata={
        _META_FORMAT: "half", _META_PRECISION: wrapped.precision, _META_NORMS: "1" if wrapped.norms_fp32 else "0"})


def load_half(path: str | Path, model_factory: Callable[[], nn.Module] | nn.Module) -> CastInputs:
    """Rebuild the CastInputs model saved by `save_half`: `model_factory()` builds the fp32 architecture (an
    nn.Module instance is also accepted and copied), which is converted with the saved precision and norm policy
    and then loaded with the saved tensors. Returned in eval mode, on the device the factory built it on."""
    path = Path(path)
    if not path.is_file():
        raise CompressionError(f"half-precision weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CompressionError(f"{path} is not a readable safetensors file ({e})") from None
    precision = meta.get(_META_PRECISION)
    if meta.get(_META_FORMAT) != "half" or precision not in PRECISIONS:
        raise CompressionError(f"{path} was not written by leankd save_half (no half-precision metadata)")
    if isinstance(model_factory, nn.Module):
        model, copy_model = model_factory, True
    else:
        model, copy_model = model_factory(), False
    wrapped = _wrap(model, precision, meta.get(_META_NORMS, "1") == "1", copy_model=copy_model)
    try:
        wrapped.inner.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelError(f"{path} does not match the model built by the factory: {e}") from None
    return wrapped
