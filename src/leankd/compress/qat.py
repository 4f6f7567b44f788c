"""Quantization-aware distillation: fine-tune the student with int8 fake quantization on ONNX Runtime's grid while
the teacher keeps distilling, then hand the float weights (snapped onto that grid) to the same ORT static int8 path
as `int8-static`.

Why our own fake quantization (about 100 lines) and not a library flow, as measured with torch 2.14.1 / torchao 0.18:
- `torch.ao.quantization.prepare_qat` (eager) still runs but is deprecated, as are its quantized tensor types.
- torchao's PT2E QAT (`prepare_qat_pt2e` + `X86InductorQuantizer`) trains, but its ONNX export ran *slower* than
  fp32 in ONNX Runtime (only part of the convs became QLinearConv) and lost 1.75 points: its full-range int8 weights
  saturate on x86 CPUs without VNNI, where ORT's fast kernels need 7-bit weights (`reduce_range`).
So the student is trained against exactly what ORT will do - per-channel symmetric weights in [-64, 64]
(scale = max|w| / 64) and per-tensor u8 activations (scale = (max - min) / 255, zero point = round(-min / scale))
on the inputs of every Conv / Linear - with BatchNorm folded into the convs first (ORT folds it too, so the grid
must be the folded weights'). Gradients pass through the rounding unchanged inside the range (straight-through
estimator, built into `torch.fake_quantize_*`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core import dist

__all__ = ["ActivationFakeQuant", "QATModel", "WeightFakeQuant", "fold_batchnorm", "prepare_qat"]

WEIGHT_QMIN, WEIGHT_QMAX = -64, 64  # ORT int8 weights with reduce_range=True (7-bit, symmetric, zero point 0)
ACT_QMIN, ACT_QMAX = 0, 255  # ORT u8 activations (asymmetric)
QUANTIZED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class WeightFakeQuant(nn.Module):
    """Parametrization of a Conv/Linear weight: round it per output channel onto ORT's reduce_range int8 grid."""

    def __init__(self):
        super().__init__()
        self.quantize = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return weight
        absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.ndim))).float()
        scale = (absmax / WEIGHT_QMAX).clamp_min(torch.finfo(torch.float32).tiny)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, WEIGHT_QMIN, WEIGHT_QMAX)


class ActivationFakeQuant(nn.Module):
    """u8 per-tensor fake quantization of a module's input with a moving-average min/max observer.

    The range is updated only in training mode (never from evaluation data); `quantize=False` makes it an observer
    only. While `calibrating`, the range is the running min/max over all batches (what ORT's MinMax calibration
    computes); during training, each batch moves it by `averaging`. Under torchrun the min/max are the global
    batch's, all-reduced over the ranks (every rank must observe in lockstep: training under DDP, or calibrating on
    the same batches)."""

    def __init__(self, averaging: float = 0.01):
        super().__init__()
        self.averaging = averaging
        self.quantize = False
        self.calibrating = False
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        if dist.is_distributed():
            # under torchrun each rank sees its share of the global batch: the range is the whole batch's (one
            # all-reduce of (-min, max)), so every rank's observer moves exactly as one process's does. Left alone,
            # DDP would broadcast rank 0's buffers at each forward: a range that saw only rank 0's share
            both = dist.all_reduce_max(torch.stack([-lo, hi]))
            lo, hi = -both[0], both[1]
        if self.calibrating:
            first = ~self.initialized
            self.min_val.copy_(torch.where(first, lo, torch.minimum(self.min_val, lo)))
            self.max_val.copy_(torch.where(first, hi, torch.maximum(self.max_val, hi)))
            self.initialized.fill_(True)
            return
        a = torch.where(self.initialized, torch.tensor(self.averaging, device=x.device), torch.tensor(1.0, device=x.device))
        self.min_val.lerp_(lo, a)
        self.max_val.lerp_(hi, a)
        self.initialized.fill_(True)

    def scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.min_val.clamp(max=0.0), self.max_val.clamp(min=0.0)  # zero must be representable (as in ORT)
        scale = ((hi - lo) / (ACT_QMAX - ACT_QMIN)).clamp_min(torch.finfo(torch.float32).tiny)
        zero_point = (ACT_QMIN - lo / scale).round().clamp(ACT_QMIN, ACT_QMAX).to(torch.int32)
        return scale.reshape(1), zero_point.reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x)
        if not self.quantize:
            return x
        scale, zero_point = self.scale_zero_point()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)

    def extra_repr(self) -> str:
        return f"averaging={self.averaging}, quantize={self.quantize}"


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_fake_quant(args[0]), *args[1:])


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, str | None]:
    """Fold every BatchNorm that directly and only follows a Conv/Linear into it (eval statistics), via torch.fx.

    Returns (model, number folded, why not) - a model torch.fx cannot trace (data-dependent control flow, many Hugging
    Face models) is returned unchanged with the tracer's complaint, and QAT then trains with its BatchNorm as is."""
    from torch.fx.experimental.optimization import fuse

    bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if bns == 0:
        return model, 0, None
    try:
        folded = fuse(model.eval())
    except Exception as e:  # symbolic tracing fails on data-dependent Python control flow
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        return model, 0, f"torch.fx could not trace the model ({type(e).__name__}: {first_line})"
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    return folded, bns - left, None


@dataclass
class QATModel:
    """A student prepared for QAT: `model` trains like any nn.Module; `strip()` gives back the plain float model
    with its weights snapped onto the int8 grid, ready for ONNX export and ORT static quantization."""

    model: nn.Module
    quantized: list[str]
    folded_batchnorms: int
    notes: list[str] = field(default_factory=list)
    _hooks: list = field(default_factory=list, repr=False)

    def fake_quants(self) -> list[ActivationFakeQuant]:
        return [m for m in self.model.modules() if isinstance(m, ActivationFakeQuant)]

    def set_quantize(self, enabled: bool) -> None:
        """Switch weight and activation fake quantization on or off (observers keep running in training mode)."""
        for m in self.model.modules():
            if isinstance(m, (ActivationFakeQuant, WeightFakeQuant)):
                m.quantize = enabled

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any]) -> int:
        """Set the activation ranges to the min/max over a few batches (ORT's MinMax calibration), with only the
        observers in training mode (dropout and any unfolded BatchNorm stay in eval). Training then moves the ranges
        by a moving average; ORT recalibrates the exported model on the same batches."""
        self.model.eval()
        for fq in self.fake_quants():
            fq.train()
            fq.calibrating = True
        n = 0
        for inputs in batches:
            forward(self.model, inputs)
            n += 1
        for fq in self.fake_quants():
            fq.calibrating = False
        self.model.eval()
        return n

    def strip(self) -> nn.Module:
        """Remove the fake-quant wrappers in place; the weights keep their snapped (grid) values."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.set_quantize(True)  # the stripped weights are the quantized ones
        for m in list(self.model.modules()):
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            if isinstance(getattr(m, "input_fake_quant", None), ActivationFakeQuant):
                del m.input_fake_quant
        return self.model


def prepare_qat(model: nn.Module, *, averaging: float = 0.01) -> QATModel:
    """Copy `model`, fold its BatchNorms and wrap every Conv/Linear with weight and input fake quantization.

    Quantization starts disabled: call `calibrate(...)`, then `set_quantize(True)`, then train."""
    import copy

    model, folded, why_not = fold_batchnorm(copy.deepcopy(model).cpu().float().eval())
    notes = []
    if why_not:
        notes.append(f"BatchNorm not folded into the convs, {why_not}: QAT trained with BatchNorm as is, so ORT's "
                     "folded weights are not exactly the ones fake-quantized")
    quantized, hooks = [], []
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)]
    for name, m in targets:
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", WeightFakeQuant())
            m.input_fake_quant = ActivationFakeQuant(averaging)
            hooks.append(m.register_forward_pre_hook(_quantize_input))
            quantized.append(name)
    return QATModel(model, quantized, folded, notes, hooks)
