"""Peak memory while a block runs. On CUDA the allocator keeps an exact peak; on CPU there is no such counter, so
a background thread samples the process RSS (~every 1 ms) and keeps the maximum. CPU peaks can therefore miss a
spike shorter than the sampling interval, and they include everything the process does meanwhile."""
from __future__ import annotations

import threading
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
