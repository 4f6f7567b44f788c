"""Wall-clock latency of one forward call. Medians and p90 over many runs, after warm-up, because single timings
are dominated by one-off costs (allocator growth, kernel selection, lazy init)."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from .devices import batch_size_of, model_device, synchronize
from .runner import Forward, inference, resolve_forward


def summarize_ms(times_ms: list[float]) -> dict:
    """`{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs"}` of a list of timings in milliseconds.

    p90 uses `statistics.quantiles(method="inclusive")`, which interpolates inside the observed range, so
    min <= median <= p90 <= max always holds.
    """
    if not times_ms:
        raise ValueError("no timings to summarize")
    p90 = times_ms[0] if len(times_ms) == 1 else statistics.quantiles(times_ms, n=10, method="inclusive")[-1]
    return {
        "median_ms": statistics.median(times_ms),
        "p90_ms": p90,
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": min(times_ms),
        "runs": len(times_ms),
    }


def measure_latency(
    model: nn.Module, inputs: Any, forward: Forward | None = None, runs: int = 30, warmup: int = 5
) -> dict:
    """Time `runs` forward calls on `inputs` after `warmup` untimed calls.

    Returns `{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "batch_size", "device", "threads"}`.
    On CUDA the device is synchronized before and after every timed call, so each timing covers the GPU work and
    not just the kernel launches. `threads` is `torch.get_num_threads()` (the intra-op CPU pool), which matters
    for CPU numbers and is recorded so they can be compared fairly.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    forward = resolve_forward(forward)
    device = model_device(model, inputs)
    times_ms: list[float] = []
    with inference(model):
        for _ in range(warmup):
            forward(model, inputs)
        synchronize(device)
        for _ in range(runs):
            synchronize(device)
            start = time.perf_counter_ns()
            forward(model, inputs)
            synchronize(device)
            times_ms.append((time.perf_counter_ns() - start) / 1e6)
    return {
        **summarize_ms(times_ms),
        "batch_size": batch_size_of(inputs),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def interleaved_latency(
    models: dict[str, nn.Module], make_inputs, batch_sizes, forward: Forward | None = None, runs: int = 30,
    warmup: int = 5, rounds: int = 3,
) -> dict[str, dict]:
    """Latency of several models compared fairly: for each batch size, all models get the SAME input batch and
    their `runs` timed calls are spread over `rounds` interleaved rounds (model order rotated every round).

    Why: on a shared or throttling machine the speed drifts by tens of percent within a minute; timing model A
    then model B turns that drift into a fake "× faster". Interleaving spreads the drift over every model.
    Returns `{name: {"batch_<bs>": {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs"}}}`."""
    forward = resolve_forward(forward)
    names = list(models)
    out: dict[str, dict] = {name: {} for name in names}
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    for bs in batch_sizes:
        inputs = make_inputs(bs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for name in names:
            device = model_device(models[name], inputs)
            with inference(models[name]):
                for _ in range(warmup):
                    forward(models[name], inputs)
            synchronize(device)
        for r, count in enumerate(per_round):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                model = models[name]
                device = model_device(model, inputs)
                with inference(model):
                    for _ in range(count):
                        synchronize(device)
                        start = time.perf_counter_ns()
                        forward(model, inputs)
                        synchronize(device)
                        times[name].append((time.perf_counter_ns() - start) / 1e6)
        for name in names:
            out[name][f"batch_{bs}"] = summarize_ms(times[name])
    return out
