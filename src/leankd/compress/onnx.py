"""ONNX export and ONNX Runtime (CPU) inference, so a distilled student can be shipped as a single `.onnx` file and
evaluated with the same task code as the PyTorch model (`model(inputs) -> logits`).

* `export_onnx` - torch.onnx.export with the dynamo (torch.export-based) exporter, dynamic batch dimension,
  fp32, eval mode, weights inside the one file, atomic write. Failures raise `ExportError` naming the operator /
  module / source line and what to do about it.
* `OnnxModel` - an `nn.Module` without parameters wrapping an `onnxruntime.InferenceSession`, so it works with
  `leankd.measure` (`measure_latency`, `interleaved_latency`, `inference`, `model_device`).
* `check_onnx` - max / mean absolute difference of ONNX Runtime vs PyTorch outputs on the same inputs.
* `onnx_latency` - same keys as `leankd.measure.latency.measure_latency`, `threads` being ORT's intra-op threads.
* Int8 post-training quantization lives in `onnx_quantize.py` (`quantize_onnx_dynamic`, `quantize_onnx_static`)
  and is re-exported here.

onnx / onnxruntime / onnxscript are imported lazily: importing this module never requires them.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from ..io import atomic_path
from ..measure.devices import batch_size_of, cpu_fp32_copy, first_tensor, to_device
from ..measure.latency import measure_latency
from ..measure.runner import inference
from .onnx_common import (
    NUMPY_DTYPES,
    ExportError,
    OnnxError,
    _require,
    feed_dict,
    initializer_bytes,
    onnx_op_counts,
)
from .onnx_quantize import quantize_onnx_dynamic, quantize_onnx_static

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

# A protobuf message cannot exceed 2 GiB; above this many weight bytes the weights must go to an external file.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


# --------------------------------------------------------------------------------------------------- export


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
    `{1: "sequence"}` so one file serves every sentence length).
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
            raise ExportError(_describe_export_failure(e, model)) from e
        if external:
            # > 2 GiB: the weights must live in a side file whose name is recorded inside the .onnx, so the file
            # is saved under its final name (not atomic); `<path>.data` holds the weights.
            path.parent.mkdir(parents=True, exist_ok=True)
            program.save(path, external_data=True)
            info = _check_exported(path, dynamic_batch)
        else:
            with atomic_path(path) as tmp:
                program.save(tmp, external_data=False)
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
                raise ExportError(_describe_export_failure(e, model, legacy=True)) from e
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


_OP_PATTERNS = [
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"Exporting the operator '([^']+)' to ONNX opset version \d+ is not supported"),
    re.compile(r"Unsupported: ONNX export of operator ([\w.:]+)"),
]


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, following Python's own display rule: the explicit
    `__cause__`, else the implicit `__context__` unless suppressed (`raise ... from None`)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return chain


def _failing_fx_node(chain: list[BaseException]):
    """The torch.fx node the exporter was translating when it failed, found in the traceback frames' locals
    (the ONNX exporter keeps it in a local called `node`). Best effort: None when not found."""
    node_type = getattr(getattr(torch, "fx", None), "Node", None)
    if node_type is None:
        return None
    for exc in chain:
        tb = exc.__traceback__
        while tb is not None:
            try:
                local = tb.tb_frame.f_locals.get("node")
            except Exception:  # noqa: BLE001 - frame introspection is best effort
                local = None
            if isinstance(local, node_type) and local.op == "call_function":
                return local
            tb = tb.tb_next
    return None


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in ([^\n]+)\n\s*([^\n]*)')


def _last_user_frame(text: str) -> str | None:
    """`"file.py:12 (forward): code"` for the last `File "...", line N, in fn` frame of a stack trace text."""
    frames = _FRAME.findall(text)
    if not frames:
        return None
    file, line, fn, code = frames[-1]
    return f"{file}:{line} ({fn.strip()}): {code.strip()}"


def _node_location(node) -> tuple[str | None, str | None]:
    """(`"module.path (ClassName)"`, last user source line) of an fx node from its export metadata."""
    module = source = None
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        qualname, cls = list(stack.values())[-1]
        cls_name = cls.split(".")[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        module = f"{qualname or '<root>'} ({cls_name})"
    trace = node.meta.get("stack_trace")
    if trace:
        source = _last_user_frame(trace)
    return module, source


def _summary_line(text: str, root: BaseException) -> str:
    """One line saying what went wrong: the exporter's own "## Exception summary" entry when present (it names
    the underlying exception), else the innermost exception."""
    m = re.search(r"## Exception summary\s*\n\s*<class '([\w.]+)'>: ([^\n]*)", text)
    if m:
        return f"{m.group(1).split('.')[-1]}: {m.group(2).strip()[:300]}"
    first = str(root).strip().splitlines()
    return f"{type(root).__name__}: {first[0][:300] if first else ''}"


def _describe_export_failure(exc: BaseException, model: nn.Module, legacy: bool = False) -> str:
    chain = _exception_chain(exc)
    text = "\n".join(str(e) for e in chain)
    root = chain[-1]
    op = module = source = None
    node = _failing_fx_node(chain)
    if node is not None:
        op = str(node.target)
        module, source = _node_location(node)
    if op is None:
        for pattern in _OP_PATTERNS:
            m = pattern.search(text)
            if m:
                op = ".".join(g for g in m.groups() if g)
                break
    if source is None:
        i = text.find("The following call raised this error:")
        if i >= 0:
            source = _last_user_frame(text[i:i + 2000].split("\n\n\n")[0])
    parts = ([f"in module {module}"] if module else []) + ([f"at {source}"] if source else [])
    where = f" [{', '.join(parts)}]" if parts else ""
    summary = _summary_line(text, root)
    name = type(model).__name__
    if legacy:
        what = f"operator {op}" if op else "an operator"
        return (
            f"ONNX export of {name} failed with the legacy exporter: {what} is not supported{where} ({summary}). "
            "Replace that operation with ONNX-supported ones (or compute it outside the model), or export with "
            "the default dynamo exporter (dynamo=True)."
        )
    data_dependent = "GuardOnDataDependentSymNode" in text or "data-dependent" in text
    shape_problem = any(s in text for s in ("Constraints violated", "inferred to be a constant",
                                            "specialized", "inconsistencies were found"))
    # the operator is the culprit only when ONNX translation (step 3) failed, not when torch.export (step 1) did
    missing_op = op is not None and (
        node is not None or "No ONNX function found" in text
        or any(type(e).__name__ in ("ConversionError", "DispatchError") for e in chain)
    )
    if data_dependent:
        return (
            f"ONNX export of {name} failed: data-dependent Python control flow (a Python `if`/loop/int() on a "
            f"tensor's values) cannot be captured by torch.export{where} ({summary}). "
            "Rewrite it with tensor ops (torch.where, masking) or torch.cond, or export with dynamo=False "
            "(the legacy tracer freezes the branch taken by the example inputs - check the result with check_onnx)."
        )
    if missing_op:
        return (
            f"ONNX export of {name} failed: operator {op} has no ONNX translation{where} ({summary}). "
            "Replace that operation with ONNX-supported ones (or compute it outside the exported model), "
            "register a translation via torch.onnx.export(custom_translation_table=...), or try "
            "export_onnx(..., dynamo=False) (the legacy exporter supports a different set of operators)."
        )
    if shape_problem:
        return (
            f"ONNX export of {name} failed: the model's shapes conflict with a dynamic batch dimension{where} "
            f"({summary}). Make the code batch-size agnostic (e.g. `x.flatten(1)` instead of reshaping with a "
            "fixed batch size) or export with dynamic_batch=False."
        )
    culprit = f" near operator {op}" if op else ""
    return (
        f"ONNX export of {name} failed{culprit}{where} ({summary}). Simplify the failing part of the model, or "
        "try export_onnx(..., dynamo=False) for the legacy exporter."
    )


# --------------------------------------------------------------------------------------------------- runtime

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
