"""fp16 / bf16: the weights cast to half precision, wrapped to take fp32 inputs and return fp32 logits."""
from __future__ import annotations

from torch import nn

from . import BuildContext, BuiltArtifact, register_target


def _half(model: nn.Module, ctx: BuildContext, precision: str) -> BuiltArtifact:
    from ..precision import save_half, to_precision

    wrapped = to_precision(model, precision)
    path = ctx.out_dir / f"{precision}.safetensors"
    save_half(path, wrapped)
    note = (f"{precision} weights halve the file; its CPU latency is measured as is, and CPUs without native "
            f"{precision} math (most x86 without AVX-512 FP16/BF16) emulate it slowly: the artifact is meant for "
            "GPUs and NPUs")
    return BuiltArtifact(wrapped, path, "torch", notes=[note])


@register_target("fp16", description="fp16 weights (PyTorch, safetensors): half the file; meant for GPUs and NPUs")
def fp16(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    return _half(model, ctx, "fp16")


@register_target("bf16", description="bf16 weights (PyTorch, safetensors): half the file, fp32's range; meant for "
                                     "GPUs and NPUs")
def bf16(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    return _half(model, ctx, "bf16")
