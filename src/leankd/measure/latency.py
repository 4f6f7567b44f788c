"""Wall-clock latency of one forward call, by the shared timer (`measure.timing`: torch.utils.benchmark's
`blocked_autorange` in interleaved rounds). Single timings are dominated by one-off costs (allocator growth, kernel
selection, lazy init) and by whatever else the machine does, so figures are robust summaries of many blocks, and a
table that noise may have spoiled says so (`reliable`, `noise`) instead of being printed as a fact.

`median_ms` holds the robust figure (median over rounds of each round's fastest block): every reader of
`median_ms` (report ratios, plots, `leankd compare`, `leankd search`) gets the figure noise cannot inflate without
changing a line; the plain median of all blocks is kept as `pooled_median_ms`."""
from __future__ import annotations

import statistics
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from .devices import batch_size_of, model_device, synchronize
from .runner import Forward, inference, resolve_forward
from .timing import (METHOD, architecture_signature, machine_state, noise_reasons, summarize_rounds, time_interleaved,
                     twin_reasons)


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


def _call(model: nn.Module, inputs: Any, forward: Forward, device):
    def fn():
        forward(model, inputs)
        synchronize(device)
    return fn


def _timed_in_inference(models: list[nn.Module], fns: dict, **kwargs) -> dict:
    """`time_interleaved` with every model in eval mode under `torch.inference_mode()` for the whole timing (not
    per call: entering it walks every submodule, which would add microseconds to a fast model's figure)."""
    with ExitStack() as stack:
        for model in models:
            if isinstance(model, nn.Module):
                stack.enter_context(inference(model))
            else:
                stack.enter_context(torch.inference_mode())
        return time_interleaved(fns, **kwargs)


def measure_latency(
    model: nn.Module, inputs: Any, forward: Forward | None = None, runs: int = 30, warmup: int = 5, rounds: int = 3,
    round_s: float = 0.1,
) -> dict:
    """Time at least `runs` forward calls on `inputs` (in `rounds` rounds of `blocked_autorange`) after `warmup`
    untimed calls.

    Returns `{"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "pooled_median_ms", "spread", "round_spread",
    "round_ms", "batch_size", "device", "threads", "reliable", "noise"}` (see `measure.timing`); `runs` is the
    number of timed calls. On CUDA the device is synchronized after every call, so each timing covers the GPU work
    and not just the kernel launches. `threads` is `torch.get_num_threads()` (the intra-op CPU pool).
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    forward = resolve_forward(forward)
    device = model_device(model, inputs)
    samples = _timed_in_inference([model], {"model": _call(model, inputs, forward, device)}, calls=runs,
                                  rounds=max(1, min(rounds, runs)), warmup=warmup, round_s=round_s)["model"]
    stats = summarize_rounds(samples)
    reasons = noise_reasons(stats, f"batch {batch_size_of(inputs)}")
    state = machine_state()
    return {**stats, "batch_size": batch_size_of(inputs), "device": str(device), "threads": state["threads"],
            "reliable": not reasons, "noise": reasons}


def interleaved_latency(
    models: dict[str, nn.Module], make_inputs, batch_sizes, forward: Forward | None = None, runs: int = 30,
    warmup: int = 5, rounds: int = 3, round_s: float = 0.1,
) -> dict[str, dict]:
    """Latency of several models compared fairly: for each batch size, all models get the SAME input batch and
    are timed in `rounds` interleaved rounds (model order rotated every round), at least `runs` calls each.

    Why: on a shared or throttling machine the speed drifts by tens of percent within a minute; timing model A
    then model B turns that drift into a fake "x faster". Interleaving spreads the drift over every model, the
    robust figure ignores disturbed blocks, and what is left is flagged: per model, `reliable` is False and
    `noise` lists why when a batch size's blocks spread widely, its rounds disagree, or a model with an identical
    architecture (same input) got a different figure.

    Returns `{name: {"batch_<bs>": {stats as `measure.timing.summarize_rounds`}, "reliable", "noise", "rounds",
    "method", "load_avg", "threads", "interop_threads", "cpu_count"}}`; the machine state is read after timing."""
    forward = resolve_forward(forward)
    names = list(models)
    out: dict[str, dict] = {name: {} for name in names}
    reasons: dict[str, list[str]] = {name: [] for name in names}
    signatures = {name: architecture_signature(models[name]) for name in names}
    for bs in batch_sizes:
        inputs = make_inputs(bs)
        fns = {name: _call(models[name], inputs, forward, model_device(models[name], inputs)) for name in names}
        samples = _timed_in_inference([models[n] for n in names], fns, calls=runs, rounds=max(1, min(rounds, runs)),
                                      warmup=warmup, round_s=round_s)
        for name in names:
            out[name][f"batch_{bs}"] = summarize_rounds(samples[name])
            reasons[name] += noise_reasons(out[name][f"batch_{bs}"], f"batch {bs}")
        twins = twin_reasons({n: out[n][f"batch_{bs}"]["median_ms"] for n in names}, signatures, f"batch {bs}")
        for name in names:
            reasons[name] += twins[name]
    state = machine_state()
    for name in names:
        out[name].update(reliable=not reasons[name], noise=reasons[name], rounds=rounds, method=METHOD, **state)
    return out
