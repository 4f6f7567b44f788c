"""ONNX export and ONNX Runtime (CPU) inference, so a distilled student can be shipped as a single `.onnx` file and
evaluated with the same task code as the PyTorch model (`model(inputs) -> logits`).

This module is the one place callers import the ONNX tools from; each lives in a module of its own:

* `export_onnx` (`onnx_export.py`) - torch.onnx.export with the dynamo (torch.export-based) exporter, dynamic batch
  dimension, fp32, eval mode, weights inside the one file, atomic write. Failures raise `ExportError` naming the
  operator / module / source line and what to do about it (`onnx_diagnose.py`).
* `OnnxModel` (`onnx_session.py`) - an `nn.Module` without parameters wrapping an `onnxruntime.InferenceSession`,
  so it works with `leankd.measure` (`measure_latency`, `interleaved_latency`, `inference`, `model_device`).
* `check_onnx` (`onnx_check.py`) - max / mean absolute difference of ONNX Runtime vs PyTorch outputs on the same
  inputs.
* `onnx_latency` (`onnx_check.py`) - same keys as `leankd.measure.latency.measure_latency`, `threads` being ORT's
  intra-op threads.
* Int8 post-training quantization (`onnx_quantize.py`): `quantize_onnx_dynamic`, `quantize_onnx_static`.

onnx / onnxruntime / onnxscript are imported lazily: importing this module never requires them.
"""
from __future__ import annotations

from .onnx_check import check_onnx, onnx_latency
from .onnx_common import ExportError, OnnxError, initializer_bytes, onnx_op_counts
from .onnx_export import export_onnx
from .onnx_quantize import quantize_onnx_dynamic, quantize_onnx_static
from .onnx_session import OnnxModel

__all__ = [
    "ExportError",
    "OnnxError",
    "OnnxModel",
    "check_onnx",
    "export_onnx",
    "initializer_bytes",
    "onnx_latency",
    "onnx_op_counts",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
]
