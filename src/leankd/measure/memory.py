"""Peak memory while a block runs. On CUDA the allocator keeps an exact peak; on CPU there is no such counter, so
a background thread samples the process RSS (~every 1 ms) and keeps the maximum. CPU peaks can therefore miss a
spike shorter than the sampling interval, and they include everything the process does meanwhile.

Because process RSS is dominated by the Python/PyTorch runtime (and the allocator reuses freed pages), it cannot
tell a small model from a large one; `tensor_memory` instead counts the bytes of the tensor storages a forward
actually allocates, which is what the report uses for CPU models."""
from __future__ import annotations

import threading
import weakref
from typing import Any

import psutil
import torch
from torch import nn

from .devices import batch_size_of, model_device, synchronize
from .runner import Forward, inference, resolve_forward

_MB = 1e6


class PeakMemory:
    """Context manager: after exit, `peak_mb`, `delta_mb` and `kind` hold the result (also `.as_dict()`).

    - CUDA (`kind="cuda_max_allocated"`): `peak_mb` = `torch.cuda.max_memory_allocated` after resetting the peak
      stats on enter (tensor memory only, not the CUDA context or allocator cache); `delta_mb` = peak minus the
      memory allocated at enter, i.e. what the block itself added at its worst moment.
    - CPU (`kind="cpu_peak_rss"`): `peak_mb` = the highest sampled resident set size of the whole process;
      `delta_mb` = peak minus RSS at enter.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.001):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self.delta_mb: float | None = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
        self._start_bytes = 0
        self._peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._start_bytes = self._peak_bytes = self._rss()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="leankd-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._peak_bytes = max(self._peak_bytes, self._rss())  # catch anything still held at exit
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = self._peak_bytes
        self.peak_mb = peak / _MB
        self.delta_mb = max(peak - self._start_bytes, 0) / _MB

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = self._rss()
            if rss > self._peak_bytes:
                self._peak_bytes = rss

    def current_peak_mb(self) -> float:
        """The peak so far, while the block is still running (checkpoints record it so a resumed run keeps it)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / _MB
        return max(self._peak_bytes, self._rss()) / _MB

    def as_dict(self) -> dict:
        """`{"peak_mb": float|None, "delta_mb": float|None, "kind": str}` (None before the block has ended)."""
        return {"peak_mb": self.peak_mb, "delta_mb": self.delta_mb, "kind": self.kind}


def inference_peak_memory(model: nn.Module, inputs: Any, forward: Forward | None = None, repeats: int = 3) -> dict:
    """Peak memory over `repeats` forward calls on the model's device, after one untimed warm-up call.

    The warm-up keeps one-off allocations (lazy init, kernel workspaces) out of `delta_mb`. Returns
    `{"peak_mb", "delta_mb", "kind", "batch_size", "repeats", "device"}`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    forward = resolve_forward(forward)
    device = model_device(model, inputs)
    with inference(model):
        forward(model, inputs)
        synchronize(device)
        meter = PeakMemory(device)
        with meter:
            for _ in range(repeats):
                forward(model, inputs)
    return {**meter.as_dict(), "batch_size": batch_size_of(inputs), "repeats": repeats, "device": str(device)}


# ---------------------------------------------------------------------------------------------- live tensor bytes


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside `obj` (tensor, dict, list, tuple, nested), depth first."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for v in values for t in _tensors_in(v)]


def _storages_of(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The untyped storages behind `t`: its own, or its inner tensors' for a traceable wrapper subclass.

    Tensors without a storage (sparse layouts, opaque subclasses) give nothing, so they are not counted.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()
        inner = [getattr(t, a) for a in attrs]
        return [st for x in inner if isinstance(x, torch.Tensor) for st in _storages_of(x)]
    try:
        return [t.untyped_storage()]
    except (RuntimeError, NotImplementedError, TypeError):
        return []


def _make_live_storage_counter():
    """Build the `TorchDispatchMode` subclass lazily: `torch.utils._python_dispatch` is a private module, so an
    import failure must become a "not available" result rather than an import error for all of `measure`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveStorageCounter(TorchDispatchMode):
        """Counts the bytes of live tensor storages created by the ATen ops run under it.

        Every storage is identified by its Python `UntypedStorage` object (PyTorch keeps one Python object per
        storage alive as long as the storage lives, and views return the same object as their base), and is
        entered once: storages registered before the block (`register_existing`) or first seen as an op *input*
        (constants, caches, anything made outside the block) are "existing" and never counted; a storage first
        seen as an op *output* was allocated by that op and adds its `nbytes()` to `live_bytes` until a
        `weakref.finalize` on it subtracts them when it is freed. So a view or an in-place op (output shares an
        already-known storage) adds nothing, and every tensor inside a tuple/list output is looked at.
        """

        def __init__(self) -> None:
            super().__init__()
            # id(storage) -> [counted bytes (0 for existing storages), finalizer]; a finalizer drops its entry when
            # the storage dies, so an id is never reused while its entry is still here.
            self._entries: dict[int, list] = {}
            self.live_bytes = 0
            self.peak_bytes = 0
            self.error: BaseException | None = None

        # -- bookkeeping ---------------------------------------------------------------------------------------
        def _on_free(self, key: int) -> None:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.live_bytes -= entry[0]

        def _add(self, st: torch.UntypedStorage, counted: bool) -> int:
            key = id(st)
            entry = self._entries.get(key)
            if entry is not None:
                if counted and entry[0] and st.nbytes() != entry[0]:  # a counted storage was resized in place
                    self.live_bytes += st.nbytes() - entry[0]
                    entry[0] = st.nbytes()
                return 0
            nbytes = int(st.nbytes())
            self._entries[key] = [nbytes if counted else 0, weakref.finalize(st, self._on_free, key)]
            if counted:
                self.live_bytes += nbytes
            return nbytes

        def register_existing(self, tensors: list[torch.Tensor]) -> int:
            """Mark the storages of `tensors` as existing (never counted); returns their bytes, each storage once."""
            return sum(self._add(st, counted=False) for t in tensors for st in _storages_of(t))

        def close(self) -> None:
            """Detach every finalizer still pending, so storages that outlive the block never call back into us."""
            for _, fin in list(self._entries.values()):
                fin.detach()
            self._entries.clear()

        # -- dispatch ------------------------------------------------------------------------------------------
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if self.error is None:
                try:
                    self.register_existing(_tensors_in(args) + _tensors_in(kwargs))
                except Exception as exc:  # noqa: BLE001 - a tracking bug must not break the forward
                    self.error = exc
            out = func(*args, **kwargs)
            if self.error is None:
                try:
                    for t in _tensors_in(out):
                        for st in _storages_of(t):
                            self._add(st, counted=True)
                    self.peak_bytes = max(self.peak_bytes, self.live_bytes)
                except Exception as exc:  # noqa: BLE001
                    self.error = exc
            return out

    return LiveStorageCounter()


def tensor_memory(model: nn.Module, inputs: Any, forward: Forward | None = None, warmup: bool = True) -> dict:
    """Inference memory of `model` on `inputs`, measured as the bytes of live tensor storages.

    One forward (`forward(model, inputs)`, default `model(inputs)`) runs in eval mode under
    `torch.inference_mode()` (the caller's per-submodule train/eval flags are restored) inside a
    `TorchDispatchMode` that watches every ATen op: each storage an op returns that did not exist before is counted
    once (`nbytes()`) while it is alive, and subtracted when it is freed. Views and in-place ops share an existing
    storage and add nothing. With `warmup` (default) one unmeasured forward runs first, so lazy initialisation and
    caches built on the first call are not counted as activations.

    Returns (MB = 1e6 bytes)::

        {"peak_mb": weights + inputs + activations peak, "weights_mb": parameters + buffers (each storage once),
         "inputs_mb": tensors in `inputs`, "activations_peak_mb": most bytes of storages created during the
         forward alive at once (the returned outputs included), "kind": "tensor_bytes", "batch_size": int | None}

    What it counts: tensor storages made by ATen ops, as seen from Python dispatch, on any device together. What it
    does not: scratch buffers a single kernel allocates and frees internally (e.g. oneDNN/im2col workspaces),
    allocator rounding, caching and fragmentation, the Python/PyTorch runtime and libraries, and tensors without a
    storage (sparse layouts). Storages kept alive only by a reference cycle are freed at the next garbage
    collection, not when the last reference goes, and count until then. It is a lower bound on what the process
    needs, but it is exact for the tensors and comparable across models. If the dispatch machinery (a private
    PyTorch API) is unavailable or fails, returns `{"peak_mb": None, ..., "kind": "not available: <reason>"}`;
    an exception raised by the model itself propagates.
    """
    forward = resolve_forward(forward)
    batch_size = batch_size_of(inputs)

    def unavailable(reason: str) -> dict:
        return {"peak_mb": None, "weights_mb": None, "inputs_mb": None, "activations_peak_mb": None,
                "kind": f"not available: {reason}", "batch_size": batch_size}

    try:
        counter = _make_live_storage_counter()
    except Exception as exc:  # noqa: BLE001
        return unavailable(f"{type(exc).__name__}: {exc}")
    try:
        with inference(model):
            if warmup:
                forward(model, inputs)
            try:
                weights = counter.register_existing(list(model.parameters()) + list(model.buffers()))
                input_bytes = counter.register_existing(_tensors_in(inputs))
            except Exception as exc:  # noqa: BLE001 - storages could not be read
                return unavailable(f"{type(exc).__name__}: {exc}")
            try:
                counter.__enter__()
            except Exception as exc:  # noqa: BLE001 - the private dispatch-mode API refused
                return unavailable(f"{type(exc).__name__}: {exc}")
            try:
                out = forward(model, inputs)
            except Exception:
                if counter.error is not None:  # our tracking broke the forward: report, do not raise
                    return unavailable(f"{type(counter.error).__name__}: {counter.error}")
                raise
            finally:
                counter.__exit__(None, None, None)
            del out
        if counter.error is not None:
            return unavailable(f"{type(counter.error).__name__}: {counter.error}")
        activations = counter.peak_bytes
    finally:
        counter.close()
    return {"peak_mb": (weights + input_bytes + activations) / _MB, "weights_mb": weights / _MB,
            "inputs_mb": input_bytes / _MB, "activations_peak_mb": activations / _MB, "kind": "tensor_bytes",
            "batch_size": batch_size}
