"""ONNX export: `export_onnx` turns a PyTorch model into one `.onnx` file (dynamo exporter, dynamic batch, fp32,
atomic write) and checks the written graph really has the dynamic batch it promised. It is apart from running the
file (`onnx_session.py`) because exporting needs torch.export / onnxscript and a copy of the model, running needs
neither; why an export failed is worked out in `onnx_diagnose.py`.

onnx / onnxscript are imported lazily: importing this module never requires them.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..io import atomic_path
from ..measure.devices import cpu_fp32_copy, to_device
from .onnx_common import ExportError, _require
from .onnx_diagnose import describe_export_failure

__all__ = ["export_onnx"]

# A protobuf message cannot exceed 2 GiB; above this many weight bytes the weights must go to an external file.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


class _DictInputs(nn.Module):
    """Adapter: positional tensors -> the dict the wrapped model expects, so every dict key becomes a named ONNX
    input. (torch.onnx treats a trailing dict in `args` as keyword arguments, so a dict can't be passed as is.)"""

    def __init__(self, model: nn.Module, keys: list[str], call: Optional[Callable[[nn.Module, dict], Any]] = None):
        super().__init__()
        self.model = model
        self.keys = list(keys)
        self.call = call  # how the model takes the dict: model(d) by default, model(**d) for text (Task.forward)

    def forward(self, *tensors: torch.Tensor) -> Any:
        inputs = dict(zip(self.keys, tensors))
        return self.call(self.model, inputs) if self.call is not None else self.model(inputs)


def _normalize_inputs(example_inputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(example_inputs, torch.Tensor):
        return ["input"], [example_inputs]
    if isinstance(example_inputs, Mapping):
        keys = [str(k) for k in example_inputs]
        values = list(example_inputs.values())
        if not values or not all(isinstance(v, torch.Tensor) for v in values):
            raise ExportError(
                "example_inputs must be a tensor or a non-empty dict of tensors; got a dict with values "
                f"{[type(v).__name__ for v in values]}"
            )
        return keys, values
    raise ExportError(
        f"example_inputs must be a tensor or a dict of tensors (what the model's forward takes), got "
        f"{type(example_inputs).__name__}; wrap multi-argument models in a module taking one tensor or dict"
    )


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's known-harmless chatter (deprecation notices from torch internals, RNN flat-weight
    notes); real problems still surface as exceptions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*were assigned during export.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape constraints.*")
        yield


def export_onnx(
    model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, input_names: list[str] | None = None,
    dynamic_batch: bool = True, opset: int | None = None, dynamo: bool = True,
    forward: Optional[Callable[[nn.Module, Any], Any]] = None, dynamic_dims: Optional[dict[int, str]] = None,
    metadata: Optional[Mapping[str, str]] = None,
) -> dict:
    """Export `model` to the single ONNX file `path` (fp32, eval mode, CPU) and return
    `{"path", "opset", "size_bytes", "exporter", "input_names", "output_names", "dynamic_batch"}`.

    `example_inputs` is what `model(...)` takes: a tensor or a dict of tensors (each dict key becomes a named ONNX
    input, in dict order; `input_names` overrides the names). With `dynamic_batch`, dim 0 of every input is
    declared dynamic through `dynamic_shapes` (the dynamo exporter's mechanism; legacy `dynamic_axes` is only
    used with `dynamo=False`). If the exported graph ends up with a fixed batch anyway (the model hard-codes the
    batch size, e.g. `x.view(32, -1)`), `ExportError` is raised rather than writing a model that fails later.

    The user's model is not touched: a CPU fp32 copy is exported in eval mode. Weights are stored inside the file
    (no `.data` side file) unless they exceed protobuf's 2 GiB limit, in which case they go to `<path>.data`
    next to it. `opset=None` uses the exporter's default. `dynamo=False` uses the legacy TorchScript exporter,
    which traces one execution path - a fallback for models torch.export cannot capture.

    `forward(model, inputs)` says how the model takes a dict of inputs (the task's `forward`; default `model(d)`).
    `dynamic_dims` names the dynamic dimensions shared by every input (default `{0: "batch"}`; text adds
    `{1: "sequence"}` so one file serves every sentence length). `metadata`: string pairs stored in the file's
    `metadata_props` (what a user needs to feed the model: `onnx_metadata.onnx_metadata`), part of the same write.
    """
    keys, tensors = _normalize_inputs(example_inputs)
    names = list(input_names) if input_names is not None else keys
    if len(names) != len(tensors):
        raise ExportError(f"input_names has {len(names)} names but the model takes {len(tensors)} input tensors")
    is_dict = isinstance(example_inputs, Mapping)
    cpu_model = cpu_fp32_copy(model).eval()
    for p in cpu_model.parameters():
        p.requires_grad_(False)
    tensors = [to_device(t, "cpu", torch.float32) for t in tensors]
    wrapped = _DictInputs(cpu_model, keys, forward).eval() if is_dict else cpu_model
    dims = dict(dynamic_dims or {0: "batch"}) if dynamic_batch else {}
    output_names = ["logits"]
    path = Path(path)
    external = _weight_bytes(cpu_model) >= _PROTOBUF_LIMIT
    if dynamo:
        _require("onnxscript")
        _require("onnx")
        named = {d: torch.export.Dim(name) for d, name in dims.items()}  # one Dim per name: shared by all inputs
        dynamic_shapes = None
        if dynamic_batch:
            per_tensor = tuple({d: named[d] for d in dims if d < t.dim()} for t in tensors)
            # the dict adapter's forward(*tensors) has ONE (var-positional) parameter holding all the tensors
            dynamic_shapes = (per_tensor,) if is_dict else per_tensor
        try:
            with _quiet_exporter():
                program = torch.onnx.export(
                    wrapped, tuple(tensors), None, dynamo=True, verbose=False, input_names=names,
                    output_names=output_names, opset_version=opset, dynamic_shapes=dynamic_shapes,
                )
        except Exception as e:
            raise ExportError(describe_export_failure(e, model)) from e
        if external:
            # > 2 GiB: the weights must live in a side file whose name is recorded inside the .onnx, so the file
            # is saved under its final name (not atomic); `<path>.data` holds the weights.
            path.parent.mkdir(parents=True, exist_ok=True)
            program.save(path, external_data=True)
            _stamp(path, metadata)
            info = _check_exported(path, dynamic_batch)
        else:
            with atomic_path(path) as tmp:
                program.save(tmp, external_data=False)
                _stamp(tmp, metadata)
                info = _check_exported(tmp, dynamic_batch)
    else:
        dynamic_axes = {n: {d: name for d, name in dims.items() if d < t.dim()} for n, t in zip(names, tensors)
                        } if dynamic_batch else None
        with atomic_path(path) as tmp:
            try:
                with _quiet_exporter():
                    torch.onnx.export(
                        wrapped, tuple(tensors), str(tmp), dynamo=False, input_names=names,
                        output_names=output_names, opset_version=opset or 17, dynamic_axes=dynamic_axes,
                    )
            except Exception as e:
                raise ExportError(describe_export_failure(e, model, legacy=True)) from e
            _stamp(tmp, metadata)
            info = _check_exported(tmp, dynamic_batch)
    return {
        "path": str(path),
        "opset": info["opset"],
        "size_bytes": path.stat().st_size,
        "exporter": "dynamo" if dynamo else "legacy",
        "input_names": info["input_names"],
        "output_names": info["output_names"],
        "dynamic_batch": dynamic_batch,
    }


def _stamp(path: Path, metadata: Optional[Mapping[str, str]]) -> None:
    """Write `metadata` into the just-saved file's `metadata_props` (the weights, inside or beside it, stay)."""
    if not metadata:
        return
    from .onnx_metadata import set_metadata

    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))


def _check_exported(path: Path, dynamic_batch: bool) -> dict:
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    inputs = list(proto.graph.input)
    if dynamic_batch:
        fixed = []
        for i in inputs:
            dims = i.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                fixed.append(f"{i.name}[0]={dims[0].dim_value}")
        if fixed:
            raise ExportError(
                f"ONNX export refused: the exported graph has a fixed batch size ({', '.join(fixed)}): the model's "
                "code specializes dim 0 (e.g. `x.view(32, -1)`, or a Python int taken from `x.shape[0]` and used "
                "as a constant). Use `x.flatten(1)` / `x.view(x.shape[0], -1)` in the model, or export with "
                "dynamic_batch=False and always run the ONNX model at the example batch size."
            )
    return {
        "opset": opset,
        "input_names": [i.name for i in inputs],
        "output_names": [o.name for o in proto.graph.output],
    }

