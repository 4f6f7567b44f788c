"""Deployment targets: each turns the trained fp32 model into an artifact file plus a runnable that looks like a
model (`runnable(inputs) -> fp32 logits`), so the task's own evaluation and the one latency harness measure it
exactly like the fp32 model. One function per target; `TARGETS` maps the recipe's names to them."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import LeanKDError
from ..measure.devices import to_device
from ..tasks.base import Task


@dataclass
class BuiltArtifact:
    runnable: nn.Module
    path: Path
    format: str  # "torch" | "onnx"
    quantized: Optional[list[str]] = None
    left_in_float: Optional[dict[str, str]] = None
    notes: list[str] = field(default_factory=list)


def _cpu_inputs(task: Task, batch_size: int) -> Any:
    return to_device(task.example_inputs(batch_size), "cpu", torch.float32)


def _calibration(task: Task, batches: int, batch_size: int = 64) -> list:
    """Un-augmented training batches (never the eval split: calibrating on test data would leak it)."""
    return [to_device(b.inputs, "cpu", torch.float32) for b in islice(task.eval_batches("train", batch_size), batches)]


def _half(precision: str):
    def build(model: nn.Module, task: Task, out_dir: Path, calibration_batches: int) -> BuiltArtifact:
        from .precision import save_half, to_precision

        wrapped = to_precision(model, precision)
        path = out_dir / f"{precision}.safetensors"
        save_half(path, wrapped)
        note = (f"{precision} weights halve the file; its CPU latency is measured as is, and CPUs without native "
                f"{precision} math (most x86 without AVX-512 FP16/BF16) emulate it slowly: the artifact is meant for "
                "GPUs and NPUs")
        return BuiltArtifact(wrapped, path, "torch", notes=[note])

    return build


def _int8_dynamic(model: nn.Module, task: Task, out_dir: Path, calibration_batches: int) -> BuiltArtifact:
    from .quantize import quantize_dynamic_int8, save_quantized

    # with example inputs, a module whose int8 version breaks the forward pass is put back in float and named
    result = quantize_dynamic_int8(model, example_inputs=_cpu_inputs(task, 2), forward=task.forward)
    path = out_dir / "int8-dynamic.pt"
    save_quantized(path, result.model)
    notes = []
    if not result.quantized:
        notes.append("no Linear/GRU/LSTM module to quantize: the artifact is the float model (use int8-static)")
    return BuiltArtifact(result.model, path, "torch", result.quantized, result.skipped, notes)


def _export(model: nn.Module, task: Task, out_dir: Path) -> Path:
    from .onnx import export_onnx

    path = out_dir / "fp32.onnx"
    export_onnx(model, _cpu_inputs(task, 2), path)
    return path


def _onnx_fp32(model: nn.Module, task: Task, out_dir: Path, calibration_batches: int) -> BuiltArtifact:
    from .onnx import OnnxModel

    path = _export(model, task, out_dir)
    return BuiltArtifact(OnnxModel(path), path, "onnx")


def _onnx_int8(mode: str):
    def build(model: nn.Module, task: Task, out_dir: Path, calibration_batches: int) -> BuiltArtifact:
        from .onnx import OnnxModel, quantize_onnx_dynamic, quantize_onnx_static

        src = out_dir / "fp32.onnx"
        if not src.exists():
            src = _export(model, task, out_dir)
        dst = out_dir / f"int8-{mode}.onnx"
        if mode == "static":
            # QOperator: same accuracy and speed as QDQ on this x86 CPU (measured on resnet20) with an ~18 % smaller
            # file; QDQ (quantize_onnx_static's default) is the more portable choice for other runtimes
            info = quantize_onnx_static(src, dst, _calibration(task, calibration_batches), quant_format="QOperator")
        else:
            info = quantize_onnx_dynamic(src, dst)
        quantized = [f"{op} x {n}" for op, n in (info.get("quantized_ops") or {}).items()]
        left = {op: f"{n} node(s) kept in float by ONNX Runtime" for op, n in (info.get("float_ops") or {}).items()}
        return BuiltArtifact(OnnxModel(dst), dst, "onnx", quantized, left)

    return build


TARGETS: dict[str, Callable[[nn.Module, Task, Path, int], BuiltArtifact]] = {
    "fp16": _half("fp16"),
    "bf16": _half("bf16"),
    "int8-dynamic": _int8_dynamic,
    "onnx": _onnx_fp32,
    "int8-static": _onnx_int8("static"),  # ONNX Runtime QDQ: the maintained static path for CNNs on CPU
    "onnx-int8-dynamic": _onnx_int8("dynamic"),
}


def build_artifact(target: str, model: nn.Module, task: Task, out_dir: Path, calibration_batches: int = 8
                   ) -> BuiltArtifact:
    if target not in TARGETS:
        raise LeanKDError(f"unknown compression target {target!r}; known: {', '.join(TARGETS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    return TARGETS[target](model, task, out_dir, calibration_batches)


@torch.no_grad()
def max_abs_diff(reference: nn.Module, artifact: nn.Module, task: Task, forward) -> float:
    """Largest logit difference between the fp32 model and the artifact on one eval batch (64 inputs)."""
    inputs = _cpu_inputs(task, 64)
    ref = copy.deepcopy(reference).cpu().float().eval()
    return float((forward(ref, inputs).float() - forward(artifact, inputs).float()).abs().max())
