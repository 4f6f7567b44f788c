"""`OnnxModel`: an ONNX file run by ONNX Runtime on CPU behind the `nn.Module` interface, so leankd's task and
measuring code take an exported model exactly like the PyTorch one. Apart from export (`onnx_export.py`) because a
shipped artifact is run without ever being exported in the same process (remeasuring, the compression targets).

onnxruntime is imported lazily: importing this module never requires it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.devices import first_tensor
from .onnx_common import NUMPY_DTYPES, OnnxError, _require, feed_dict

__all__ = ["OnnxModel"]


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on CPU, callable like the PyTorch model: `model(inputs) -> logits`.

    `inputs` is a tensor (single-input models) or a dict of tensors keyed by the ONNX input names (numpy arrays
    work too). Tensors are converted through numpy (zero-copy for contiguous CPU tensors, cast to the dtype the
    graph declares); the first output is returned as a torch tensor on the inputs' device. `run()` returns all
    outputs as numpy arrays.

    It subclasses `nn.Module` with no parameters so leankd's measuring code (`inference`, `model_device`,
    `measure_latency`, `interleaved_latency`) takes it as is; `.eval()` / `.train()` are no-ops for the graph.
    `threads` defaults to `torch.get_num_threads()` so ORT and PyTorch timings use the same number of cores
    (ORT's own default is every physical core). Graph optimizations are fully on (`ORT_ENABLE_ALL`).

    `spin=False` (default) stops ORT's worker threads from busy-waiting after each call. ORT spins by default,
    which on a 2-core machine steals the cores from whatever runs next: measured with `interleaved_latency`,
    PyTorch eager resnet20 at batch 1 went from 3.0 ms to 4.7 ms median (p90 3.8 -> 26 ms) next to spinning ORT
    sessions, while ORT itself gained nothing measurable at batch 1 and <= 10% at batch 64. Set `spin=True` for a
    dedicated single-model server.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, optimize: bool = True,
                 spin: bool = False):
        super().__init__()
        self.path = str(path)
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.optimize = optimize
        self.spin = spin
        self._open()

    def _open(self) -> None:
        ort = _require("onnxruntime")
        if not os.path.exists(self.path):
            raise OnnxError(f"ONNX file {self.path!r} does not exist; create it with export_onnx()")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.log_severity_level = 3  # errors only: don't print ORT's optimizer notes
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise OnnxError(f"ONNX Runtime cannot load {self.path!r}: {e}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_dtypes = {i.name: NUMPY_DTYPES.get(i.type) for i in self.session.get_inputs()}

    # An InferenceSession can't be pickled or deep-copied: rebuild it from the file instead.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._open()

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        clone = OnnxModel.__new__(OnnxModel)
        clone.__setstate__({k: v for k, v in self.__getstate__().items()})
        memo[id(self)] = clone
        return clone

    def extra_repr(self) -> str:
        return f"path={self.path!r}, threads={self.threads}, inputs={self.input_names}"

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        return feed_dict(inputs, self.input_names, self._input_dtypes, what=Path(self.path).name)

    def run(self, inputs: Any) -> list[np.ndarray]:
        """All outputs as numpy arrays, in `output_names` order."""
        return self.session.run(None, self._feed(inputs))

    def forward(self, inputs: Any = None, **named: Any) -> torch.Tensor:
        """`model(inputs)` or `model(**inputs)` (how text models are called): the same named ONNX inputs."""
        inputs = named if inputs is None else inputs
        out = self.session.run(self.output_names[:1], self._feed(inputs))[0]
        result = torch.from_numpy(np.ascontiguousarray(out))
        t = first_tensor(inputs) if not isinstance(inputs, np.ndarray) else None
        return result.to(t.device) if t is not None and t.device.type != "cpu" else result
