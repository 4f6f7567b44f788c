"""Pieces shared by the ONNX modules (export, session, checks, quantization; `onnx.py` re-exports them): the error
types, lazy imports of the optional ONNX packages, turning leankd inputs into an ONNX Runtime feed, and reading op
counts / weight bytes."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CompressionError

INSTALL_HINT = "install the ONNX extras: pip install onnx onnxruntime onnxscript"


class OnnxError(CompressionError):
    """An ONNX artifact cannot be built, loaded, run or quantized; the message says why and what to do."""


class ExportError(OnnxError):
    """torch.onnx.export failed; the message names the failing operator / module / source line when it can."""


def _require(module: str):
    """Import an optional dependency, turning its absence into an `OnnxError` with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise OnnxError(f"{module} is not installed ({e}); {INSTALL_HINT}") from e


NUMPY_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def feed_dict(inputs: Any, input_names: Sequence[str], dtypes: Mapping[str, Any] | None = None,
              what: str = "the ONNX model") -> dict[str, np.ndarray]:
    """`{input_name: contiguous numpy array}` from a tensor / numpy array (single-input models) or a dict keyed
    by the input names. Arrays are cast to `dtypes[name]` when given (e.g. int32 token ids -> int64)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        if len(input_names) != 1:
            raise OnnxError(f"{what} takes {len(input_names)} inputs {list(input_names)}; pass a dict of tensors")
        inputs = {input_names[0]: inputs}
    if not isinstance(inputs, Mapping):
        raise OnnxError(f"inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")
    missing = [n for n in input_names if n not in inputs]
    if missing:
        raise OnnxError(f"inputs lack {missing}: {what} expects {list(input_names)}, got {list(inputs)}")
    feed = {}
    for name in input_names:
        value = inputs[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        dtype = (dtypes or {}).get(name)
        if dtype is not None and value.dtype != dtype:
            value = value.astype(dtype)
        feed[name] = np.ascontiguousarray(value)
    return feed


def load_proto(path: str | os.PathLike, external: bool = False):
    onnx = _require("onnx")
    if not Path(path).exists():
        raise OnnxError(f"ONNX file {str(path)!r} does not exist")
    return onnx.load(str(path), load_external_data=external)


def onnx_op_counts(path_or_proto: Any) -> dict[str, int]:
    """`{op_type: count}` of the nodes in an ONNX model's main graph, sorted by op type."""
    proto = path_or_proto if hasattr(path_or_proto, "graph") else load_proto(path_or_proto)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def initializer_bytes(path_or_proto: Any) -> int:
    """Bytes of the graph's weights (initializers, and tensors held in Constant nodes)."""
    onnx = _require("onnx")
    proto = path_or_proto if hasattr(path_or_proto, "graph") else load_proto(path_or_proto, external=True)

    def size(t) -> int:
        if t.raw_data:
            return len(t.raw_data)
        n = 1
        for d in t.dims:
            n *= d
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    total = sum(size(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    total += size(a.t)
    return total
