"""Dynamic int8 quantization in PyTorch (weights int8, activations quantized on the fly): the CPU path for
Linear- and RNN-heavy models (LSTM/GRU seq2seq, MLPs, transformer heads). Embeddings are quantized too, weight-only
(int8 rows with one float scale and zero point per row, PyTorch's float-qparams embedding quantization): a word-level
text student is mostly its embedding (a BiLSTM's 17,641 x 300 table was 90 % of its parameters, and leaving it in
float made its "int8" file only 1.08x smaller).

Quantization is done ONE MODULE AT A TIME, so a module that PyTorch cannot quantize is named and left in float
instead of crashing the whole model, and `QuantizationResult` says exactly what runs in int8 and what does not.
`torch.ao.quantization.quantize_dynamic` is deprecated (it still works in torch 2.14 for Linear/LSTM/GRU; torchao,
its successor, handles Linear only); it is called from ONE function, `_to_dynamic_int8`, so it can be replaced.

Failure modes found while building this (torch 2.14.1), each handled here instead of crashing or silently
producing a broken model:
- LSTM with `proj_size > 0`: `quantize_dynamic` succeeds, but the quantized LSTM drops the projection and its
  forward then fails ("The number of rows in the packB should be equal to K"). Left in float, named.
- LSTM/GRU with `bias=False`: AssertionError "mod.bias must be True". Left in float, named.
- a module whose weight is None (e.g. an output Linear whose weight is tied by hand in forward):
  AttributeError "'NoneType' object has no attribute 'numel'" from the weight observer. Left in float, named.
- weight_norm / spectral_norm through `torch.nn.utils.parametrizations`: the parametrized class is rejected by
  `from_float`; the parametrization is baked into a plain weight first (same outputs), then quantized.
- hook-based (old) `torch.nn.utils.weight_norm` / pruning: the model cannot even be deep-copied; a
  CompressionError says to remove the hooks first.
- Linear layers inside `nn.TransformerEncoderLayer` / `nn.MultiheadAttention`: their parent's forward reads
  `child.weight` directly, which a quantized Linear does not have ("'function' object has no attribute
  'device'"). Left in float, named.
- Embeddings: the int8 `EmbeddingBag` always sums (it ignores mode="mean"/"max": outputs off by a factor), ignores
  `padding_idx` (float excludes those entries from the bag) and `max_norm` (float renormalizes looked-up rows), as
  does the int8 `Embedding` for max_norm. Those are left in float, named. `padding_idx` of an `nn.Embedding` only
  stops its row's gradient, so it is quantized (the all-zero padding row stays exactly zero). An embedding whose
  weight other code reads as a tensor (an output layer tied by hand, `F.linear(x, emb.weight)`) breaks when
  quantized, so embeddings are quantized only when example inputs let the forward pass be checked. PyTorch's int8
  embeddings refuse non-contiguous indices (BERT's `expand()`ed token types): `int8_embedding.py` accepts them.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..io import atomic_path
from ..measure.devices import cpu_fp32_copy, to_device
from ..measure.runner import Forward, inference, resolve_forward
from ..train.checkpoint import unwrap
from .errors import CompressionError

SCHEME = "int8-dynamic"

QUANTIZABLE_TYPES: dict[str, type] = {
    "Linear": nn.Linear,
    "LSTM": nn.LSTM,
    "GRU": nn.GRU,
    "LSTMCell": nn.LSTMCell,
    "GRUCell": nn.GRUCell,
    "RNNCell": nn.RNNCell,
    "Embedding": nn.Embedding,  # weight-only: int8 rows, per-row float scale and zero point
    "EmbeddingBag": nn.EmbeddingBag,
}
EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
DEFAULT_MODULE_TYPES = ("Linear", "GRU", "LSTM", "Embedding", "EmbeddingBag")
NOT_COVERED = ("not covered by dynamic int8, which quantizes Linear, recurrent and embedding layers (int8-static / "
               "ONNX Runtime also covers convolutions)")
EMBEDDING_NOT_SUPPORTED = ("embedding: quantized only when example inputs check the forward pass (other code may read "
                           "its .weight as a tensor, e.g. an output layer tied to it)")

# Parents whose own forward reads `child.weight` (fast-path checks, F.multi_head_attention_forward): a quantized
# Linear child breaks them, so their Linear children stay in float.
_READS_CHILD_WEIGHTS: tuple[type, ...] = (nn.TransformerEncoderLayer, nn.MultiheadAttention)
_AGGREGATE_ABOVE = 3  # more skipped leaves of one type than this are listed as "Conv2d x 19"
_ROOT_NAME = "(model)"  # the name used when the model itself is a Linear/LSTM/GRU


@dataclass
class QuantizationResult:
    """What `quantize_dynamic_int8` did. `quantized`: module paths now in int8. `skipped`: module path (or
    "Type x N" for many of one type) -> why it stays in float. `max_abs_diff`: largest output difference vs the
    float model on the example inputs (None when none were given)."""

    model: nn.Module
    quantized: list[str]
    skipped: dict[str, str]
    scheme: str = SCHEME
    engine: str = ""
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def select_quantized_engine() -> str:
    """Set `torch.backends.quantized.engine` to the best available CPU backend ('x86', then 'fbgemm', then
    'qnnpack' on ARM) and return its name. The setting is process-wide and is left in place: the quantized
    modules run with the engine they were packed for."""
    supported = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in supported:
            if torch.backends.quantized.engine != engine:
                torch.backends.quantized.engine = engine
            return engine
    raise CompressionError(f"this PyTorch build has no quantized CPU engine (found {supported}); dynamic int8 "
                           "needs x86/fbgemm or qnnpack: use the ONNX Runtime int8 targets instead")


@contextmanager
def _quiet_quantization_warnings() -> Iterator[None]:
    """torch.ao.quantization warns on every call that it is deprecated (and quantize_per_tensor that quantized
    tensors are, and torch.load of quantized tensors that TypedStorage is); these warnings are about the API, not
    the model, so they are silenced here and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
        yield


def _to_dynamic_int8(module: nn.Module) -> nn.Module:
    """THE one call of `torch.ao.quantization.quantize_dynamic` in leankd: the dynamic int8 version of one float
    module (Linear / LSTM / GRU / cells), or the weight-only int8 version of an Embedding / EmbeddingBag (uint8 rows
    with a float scale and zero point per row: `float_qparams_weight_only_qconfig`, what torchao's embedding
    quantization also does), or an exception. Replace this function to move to another backend.

    The module is put in a throwaway parent because quantize_dynamic only swaps children; its deprecation warning
    is suppressed locally (`_quiet_quantization_warnings`)."""
    from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

    from .int8_embedding import accept_any_indices

    holder = nn.Module()
    holder.add_module("m", module)
    had_qconfig = "qconfig" in module.__dict__  # a user-set qconfig is respected by quantize_dynamic and kept
    if isinstance(module, EMBEDDING_TYPES):
        spec, dtype = {"m": float_qparams_weight_only_qconfig}, torch.quint8
    else:
        spec, dtype = {"m"}, torch.qint8
    try:
        with _quiet_quantization_warnings():
            quantize_dynamic(holder, qconfig_spec=spec, dtype=dtype, inplace=True)
    finally:
        if not had_qconfig:  # the float module may stay in the model: leave no trace on it
            module.__dict__.pop("qconfig", None)
    qmod = holder._modules["m"]
    if qmod is module:
        raise RuntimeError(f"quantize_dynamic has no dynamic int8 version of {type(module).__name__}")
    return accept_any_indices(qmod)  # int8 embeddings: non-contiguous indices too (int8_embedding.py)


class _Root(nn.Module):
    """A parent for the user's model, so that the model itself (a bare nn.LSTM) can be swapped like any child."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


@dataclass
class _Slot:
    name: str
    module: nn.Module
    places: list[tuple[nn.Module, str]]  # every (parent, attribute) holding this module (tied modules: several)

    def put(self, module: nn.Module) -> None:
        for parent, attr in self.places:
            parent._modules[attr] = module


def _slots(root: _Root) -> list[_Slot]:
    """Every distinct module under `root.model` in definition order, with all the places that hold it."""
    slots: dict[int, _Slot] = {}
    for name, module in root.named_modules(remove_duplicate=False):
        if not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        display = name[len("model."):] if name.startswith("model.") else _ROOT_NAME
        slot = slots.setdefault(id(module), _Slot(display, module, []))
        slot.places.append((parent, attr))
    return list(slots.values())


def _under(name: str, prefixes: list[str]) -> bool:
    return any(p == _ROOT_NAME or name.startswith(p + ".") for p in prefixes)


def _bake_parametrizations(module: nn.Module) -> None:
    """weight_norm / spectral_norm via torch.nn.utils.parametrizations -> a plain weight with the same value."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module):
        # The generated Parametrized<Type> class is shared with the caller's model (deepcopy keeps classes) and
        # remove_parametrizations deletes properties from that class: without a private class for this copy,
        # baking it would break the caller's model ("'ParametrizedLinear' object has no attribute 'weight'").
        cls = type(module)
        own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, own)
        for tensor_name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def _float_type(module: nn.Module) -> type:
    from torch.nn.utils.parametrize import type_before_parametrizations

    return type_before_parametrizations(module)


def _precheck(module: nn.Module, cls: type) -> str | None:
    """Why a module of a quantizable type must stay float, for the cases PyTorch gets wrong or words badly."""
    if issubclass(cls, nn.RNNBase) and getattr(module, "proj_size", 0) > 0:
        return (f"{cls.__name__} with proj_size: the dynamic int8 {cls.__name__} ignores the projection "
                "(its forward would fail)")
    if issubclass(cls, (nn.RNNBase, nn.RNNCellBase)) and not module.bias:
        return f"{cls.__name__} with bias=False: the dynamic int8 {cls.__name__} requires biases"
    if issubclass(cls, EMBEDDING_TYPES) and module.max_norm is not None:
        return (f"{cls.__name__} with max_norm: the int8 {cls.__name__} does not renormalize looked-up rows "
                "(kept in float)")
    if issubclass(cls, nn.EmbeddingBag) and module.mode != "sum":
        return (f"EmbeddingBag with mode={module.mode!r}: the int8 EmbeddingBag always sums (kept in float; "
                "mode='sum' is quantized)")
    if issubclass(cls, nn.EmbeddingBag) and module.padding_idx is not None:
        return ("EmbeddingBag with padding_idx: the int8 EmbeddingBag would count the padding entries in the bag "
                "(kept in float)")
    return None


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _floats(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for v in values for t in _floats(v)]


def _max_abs_diff(a: Any, b: Any) -> float:
    pairs = list(zip(_floats(a), _floats(b), strict=False))
    return max((float((x.float() - y.float()).abs().max()) for x, y in pairs if x.numel()), default=0.0)


def _forward_failure(e: BaseException) -> str:
    """Why a swapped module broke the forward pass. The common case (a reference report's seq2seq died on it): code
    outside the module reads its `.weight` / `.bias` as tensors (`x @ m.weight`, `F.linear(x, m.weight)`), but a
    dynamic-int8 module keeps packed weights and `.weight` becomes a method."""
    text = _one_line(e)
    if isinstance(e, (TypeError, AttributeError)) and any(w in text for w in ("method", "function", "weight", "bias",
                                                                               "NoneType")):
        return ("kept in float: other code reads this module's weights as tensors (e.g. `x @ m.weight` or "
                "`F.linear(x, m.weight)`), which an int8 module does not have; call the module instead (`m(x)`) "
                f"to quantize it (forward raised {text})")
    return f"failed at forward: {text}"


def _copy_for_quantization(model: nn.Module) -> nn.Module:
    try:
        return cpu_fp32_copy(unwrap(model)).eval()
    except Exception as e:  # hook-based weight_norm / pruning keep non-leaf tensors as attributes
        raise CompressionError(
            f"the model cannot be copied for quantization ({_one_line(e)}); remove hook-based "
            "torch.nn.utils.weight_norm / pruning first (torch.nn.utils.remove_weight_norm(module), "
            "torch.nn.utils.prune.remove(module, 'weight')) or use torch.nn.utils.parametrizations.weight_norm"
        ) from None


def quantize_dynamic_int8(
    model: nn.Module,
    module_types: Sequence[str] = DEFAULT_MODULE_TYPES,
    example_inputs: Any = None,
    forward: Forward | None = None,
) -> QuantizationResult:
    """A dynamic-int8 copy of `model` (CPU, eval mode); the original model is not modified.

    `module_types`: names from `QUANTIZABLE_TYPES` ("Linear", "LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell",
    "Embedding", "EmbeddingBag"); embeddings are quantized only with `example_inputs` (see the module docstring).
    Only modules of exactly these types are swapped (a subclass may have its own forward; it is listed in
    `skipped`). Each module is quantized on its own through `_to_dynamic_int8`, the single call of the deprecated
    `torch.ao.quantization.quantize_dynamic` (whose DeprecationWarning is suppressed there); a module whose
    quantization raises is named in `skipped` ("failed: <exception>") and kept in float. Leaf modules with
    parameters of other types (Conv, BatchNorm, ...) are listed in `skipped` too, aggregated as
    "Conv2d x 19" when there are more than 3 of a type.

    With `example_inputs` (and `forward(model, inputs)`, default `model(inputs)`), the model is run after every
    swap; a module whose quantized version breaks the forward pass is put back in float ("failed at forward:
    ..."), and `max_abs_diff` reports the final output difference against the float model.

    Sets the process-wide quantized engine (`select_quantized_engine`).
    """
    unknown = [t for t in module_types if t not in QUANTIZABLE_TYPES]
    if unknown:
        raise CompressionError(f"unknown module type(s) for dynamic int8: {unknown}; choose from "
                               f"{', '.join(QUANTIZABLE_TYPES)}")
    selected = tuple(QUANTIZABLE_TYPES[t] for t in module_types)
    engine = select_quantized_engine()
    root = _Root(_copy_for_quantization(model))

    run: Callable[[], Any] | None = None
    reference = None
    if example_inputs is not None:
        fwd = resolve_forward(forward)
        inputs = to_device(example_inputs, "cpu", torch.float32)

        def forward_once() -> Any:
            with inference(root.model):
                return fwd(root.model, inputs)

        run = forward_once

        try:
            reference = run()
        except Exception as e:
            raise CompressionError(f"the float model fails on example_inputs ({_one_line(e)}); pass inputs "
                                   "(and a forward function) that the model accepts") from None

    quantized: list[str] = []
    skipped: dict[str, str] = {}
    handled: list[str] = []  # quantized or failed candidates: their parametrization submodules are not reported
    not_covered: dict[str, list[tuple[str, str]]] = defaultdict(list)

    for slot in _slots(root):
        name, module = slot.name, slot.module
        if _under(name, handled):
            continue
        cls = _float_type(module)
        if isinstance(module, tuple(QUANTIZABLE_TYPES.values())) or cls in QUANTIZABLE_TYPES.values():
            handled.append(name)
            base = next(b for b in QUANTIZABLE_TYPES.values() if issubclass(cls, b))
            reader = next((p for p, _ in slot.places if isinstance(p, _READS_CHILD_WEIGHTS)), None)
            if reader is not None:
                skipped[name] = (f"inside {type(reader).__name__}: its forward reads .weight of this "
                                 f"{cls.__name__} directly (use ONNX Runtime int8 for it)")
            elif cls is not base:
                skipped[name] = f"{cls.__name__} subclasses {base.__name__}: dynamic int8 swaps exact types only"
            elif cls not in selected:
                skipped[name] = f"{cls.__name__} not in module_types {tuple(module_types)}"
            elif (why := _precheck(module, cls)) is not None:
                skipped[name] = why
            elif issubclass(cls, EMBEDDING_TYPES) and run is None:
                skipped[name] = EMBEDDING_NOT_SUPPORTED
            else:
                try:
                    _bake_parametrizations(module)
                    qmod = _to_dynamic_int8(module)
                except Exception as e:
                    skipped[name] = f"failed: {_one_line(e)}"
                    continue
                slot.put(qmod)
                if run is not None:
                    try:
                        run()
                    except Exception as e:
                        slot.put(module)
                        skipped[name] = _forward_failure(e)
                        continue
                quantized.append(name)
            continue
        if any(True for _ in module.parameters(recurse=False)):
            not_covered[type(module).__name__].append((name, NOT_COVERED))

    for type_name, entries in not_covered.items():
        if len(entries) > _AGGREGATE_ABOVE:
            skipped[f"{type_name} x {len(entries)}"] = entries[0][1]
        else:
            skipped.update(dict(entries))

    result = QuantizationResult(root.model.eval(), quantized, skipped, SCHEME, engine)
    if run is not None:
        result.max_abs_diff = _max_abs_diff(reference, run())
    if not quantized:
        result.notes.append("no module was quantized: the model runs entirely in float")
    return result


def embedding_notes(result: QuantizationResult, float_model: nn.Module) -> list[str]:
    """One sentence per embedding of `float_model`: int8 or float (and why), with its share of the parameters - the
    embedding usually decides how much smaller a text student's int8 file is."""
    total = sum(p.numel() for p in float_model.parameters()) or 1
    notes = []
    for name, m in unwrap(float_model).named_modules():
        if not isinstance(m, EMBEDDING_TYPES) or m.weight is None:
            continue
        name = name or _ROOT_NAME
        what = f"{type(m).__name__} {name} ({m.num_embeddings:,} x {m.embedding_dim}, {m.weight.numel() / total:.0%} " \
               "of the parameters)"
        if name in result.quantized:
            notes.append(f"{what} is int8: one byte per weight plus a float scale and zero point per row "
                         "(weight-only: looked-up rows are dequantized to float)")
        else:
            notes.append(f"{what} stays in float: {result.skipped.get(name, 'not quantized')}")
    return notes


def save_quantized(path: str | Path, qmodel: nn.Module | QuantizationResult) -> None:
    """Write `torch.save(qmodel.state_dict())` atomically.

    Not safetensors: dynamic-quantized modules keep packed weights (TorchScript objects) that safetensors cannot
    store. `load_quantized` reads it back with `weights_only=True`, allowing only `torch.ScriptObject` (the packed
    weights) beyond plain tensors, so loading never runs arbitrary pickled code."""
    model = qmodel.model if isinstance(qmodel, QuantizationResult) else qmodel
    state = unwrap(model).state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def _load_quantized_state(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals([torch.ScriptObject]), _quiet_quantization_warnings():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CompressionError(f"{path} is not a readable quantized state dict ({_one_line(e)}); rebuild it with "
                               "save_quantized") from None


def load_quantized(
    path: str | Path,
    float_model_factory: Callable[[], nn.Module] | nn.Module,
    quantized_names: Sequence[str] | QuantizationResult,
) -> nn.Module:
    """Rebuild a model saved by `save_quantized`: build the float model (`float_model_factory()`, or a copy of an
    nn.Module instance), quantize exactly the modules in `quantized_names` (`QuantizationResult.quantized`, or the
    result itself) the same way, then load the saved state dict. Returns the model on CPU in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CompressionError(f"quantized model file {path} does not exist")
    names = list(quantized_names.quantized if isinstance(quantized_names, QuantizationResult) else quantized_names)
    select_quantized_engine()
    if isinstance(float_model_factory, nn.Module):
        model = _copy_for_quantization(float_model_factory)
    else:
        model = float_model_factory().cpu().float().eval()
    root = _Root(model)
    by_name = {slot.name: slot for slot in _slots(root)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ModelError(f"the float model has no module(s) {missing} that {path} was quantized with; build the "
                         "same architecture as the quantized model")
    for name in names:
        slot = by_name[name]
        try:
            _bake_parametrizations(slot.module)
            slot.put(_to_dynamic_int8(slot.module))
        except Exception as e:
            raise CompressionError(f"module {name!r} cannot be quantized again ({_one_line(e)})") from None
    state = _load_quantized_state(path)
    try:
        root.model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise ModelError(f"{path} does not match the model rebuilt from the factory ({_one_line(e, 500)})") from None
    return root.model.eval()


def artifact_size_bytes(path: str | Path) -> int:
    """Bytes on disk of an artifact: a file's size, or the total of all files under a directory (e.g. an ONNX
    model with external data)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    raise CompressionError(f"artifact {path} does not exist")


__all__ = [
    "DEFAULT_MODULE_TYPES",
    "EMBEDDING_NOT_SUPPORTED",
    "NOT_COVERED",
    "QUANTIZABLE_TYPES",
    "SCHEME",
    "QuantizationResult",
    "artifact_size_bytes",
    "embedding_notes",
    "load_quantized",
    "quantize_dynamic_int8",
    "save_quantized",
    "select_quantized_engine",
]
