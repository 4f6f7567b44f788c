"""Checks of an ONNX artifact against what it replaces: `check_onnx` (how far ONNX Runtime's outputs are from
PyTorch's on the same inputs) and `onnx_latency` (its speed, in the keys `measure_latency` reports for a PyTorch
model). Apart from `onnx_session.py` because these compare and time a session; they are not part of running one.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.devices import batch_size_of, cpu_fp32_copy, to_device
from ..measure.latency import measure_latency
from ..measure.runner import inference
from .onnx_common import OnnxError
from .onnx_session import OnnxModel

__all__ = ["check_onnx", "onnx_latency"]


def _as_onnx_model(model_or_path: Any, threads: int | None = None) -> OnnxModel:
    if isinstance(model_or_path, OnnxModel):
        return model_or_path
    return OnnxModel(model_or_path, threads=threads)


def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten_tensors(v)]
    return []


def check_onnx(onnx_model: str | os.PathLike | OnnxModel, model: nn.Module, inputs: Any) -> dict:
    """Compare ONNX Runtime with PyTorch (CPU fp32 copy of `model`, eval mode) on the same `inputs`.

    Returns `{"max_abs_diff", "mean_abs_diff", "argmax_agreement", "outputs"}` over all outputs (PyTorch outputs
    flattened depth first, dicts in insertion order). `argmax_agreement` is the fraction of rows whose arg-max
    over the last dim agrees for the first output (the logits), or None when it is not at least 2-D.
    """
    onnx_model = _as_onnx_model(onnx_model)
    reference = cpu_fp32_copy(model)
    cpu_inputs = to_device(inputs, "cpu", torch.float32)
    with inference(reference):
        expected = _flatten_tensors(reference(cpu_inputs))
    got = onnx_model.run(cpu_inputs)
    if len(expected) != len(got):
        raise OnnxError(f"PyTorch returned {len(expected)} tensors but the ONNX model {len(got)} outputs")
    max_abs, total, count = 0.0, 0.0, 0
    for e, g in zip(expected, got):
        e = e.float().numpy()
        g = np.asarray(g, dtype=np.float32)
        if e.shape != g.shape:
            raise OnnxError(f"output shape mismatch: PyTorch {tuple(e.shape)} vs ONNX {tuple(g.shape)}")
        diff = np.abs(e - g)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            total += float(diff.sum(dtype=np.float64))
            count += diff.size
    agreement = None
    if expected and expected[0].dim() >= 2:
        agreement = float((expected[0].argmax(-1) == torch.from_numpy(got[0]).argmax(-1)).float().mean())
    return {"max_abs_diff": max_abs, "mean_abs_diff": total / max(count, 1), "argmax_agreement": agreement,
            "outputs": len(got)}


def onnx_latency(onnx_model: str | os.PathLike | OnnxModel, inputs: Any, runs: int = 30, warmup: int = 5) -> dict:
    """Latency of `onnx_model(inputs)` (ONNX Runtime, CPU): the keys of `measure_latency` -
    `{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "batch_size", "device", "threads"}` - with `threads`
    being ORT's intra-op thread count. Timing covers the whole call, including the (zero-copy for contiguous CPU
    tensors) torch <-> numpy conversion, just as a PyTorch model's timing covers its Python overhead."""
    onnx_model = _as_onnx_model(onnx_model)
    result = measure_latency(onnx_model, inputs, runs=runs, warmup=warmup)
    result["device"] = "cpu"
    result["threads"] = onnx_model.threads
    result["batch_size"] = batch_size_of(inputs) if not isinstance(inputs, np.ndarray) else int(inputs.shape[0])
    return result
