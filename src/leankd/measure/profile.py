"""One cost profile per model (parameters, size, MACs, latency, memory), produced by the same code for the
teacher, the baseline student and the distilled student so the ratios in the report compare like with like."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .cost import count_flops, count_parameters, serialized_size_bytes
from .devices import cpu_fp32_copy, model_device, to_device
from .latency import measure_latency
from .memory import inference_peak_memory, tensor_memory
from .runner import Forward
from .timing import METHOD, machine_state

_LATENCY_KEYS = ("median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "pooled_median_ms", "spread", "round_spread",
                 "round_ms")


def _is_cpu_fp32(model: nn.Module) -> bool:
    tensors = list(model.parameters()) + list(model.buffers())
    return all(t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == torch.float32) for t in tensors)


def _latency_by_batch(model: nn.Module, inputs_for: Callable[[int], Any], batch_sizes: Sequence[int],
                      forward: Forward | None, runs: int, warmup: int) -> dict:
    out, noise = {}, []
    for bs in batch_sizes:
        result = measure_latency(model, inputs_for(bs), forward=forward, runs=runs, warmup=warmup)
        out[f"batch_{bs}"] = {k: result[k] for k in _LATENCY_KEYS}
        noise += result["noise"]
    return {**out, **machine_state(), "method": METHOD, "reliable": not noise, "noise": noise}


def profile_model(
    model: nn.Module,
    make_inputs: Callable[[int], Any],
    *,
    forward: Forward | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    runs: int = 30,
    warmup: int = 5,
    cpu_latency: bool = True,
) -> dict:
    """Cost profile of `model`; `make_inputs(bs)` returns a batch of `bs` inputs on the model's device.

    Returns::

        {"cost": {"params", "trainable_params", "size_mb", "size_bytes", "macs", "flops"},   # MACs/FLOPs per sample
         "latency": {"cpu":  {"threads": int, "load_avg", "reliable", "noise", ...,
                              "batch_<bs>": {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", ...}},
                     "cuda": {"device_name": str, "batch_<bs>": {...}}},   # "cuda" only for a CUDA model,
                                                                           # "cpu" only when cpu_latency=True
         "memory": {"inference_peak_mb", "inference_delta_mb", "kind", "batch_size"}}

    CPU latency always runs on an fp32 CPU copy of the model (inputs moved to CPU, floating tensors cast to
    fp32), so CPU numbers are comparable whatever device or dtype the model was trained in. Memory is measured on
    the model's own device at the largest batch size: on CUDA `kind="cuda_max_allocated"` (the allocator's peak
    and its rise over the start); elsewhere `kind="tensor_bytes"` from `tensor_memory` (weights + inputs + peak
    live activation storages, and the activation peak as the delta), because the process RSS on CPU is dominated
    by the runtime and cannot tell models apart. If tensor counting is unavailable the two numbers are None and
    `kind` says why. MACs/FLOPs come from one forward of the fp32 CPU copy on `make_inputs(1)` (so a GRU on CUDA,
    whose cuDNN kernel FlopCounterMode cannot see, is counted like on the CPU).
    """
    batch_sizes = tuple(int(bs) for bs in batch_sizes)
    if not batch_sizes or any(bs < 1 for bs in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes}")
    one = make_inputs(1)
    device = model_device(model, one)

    params = count_parameters(model)
    size_bytes = serialized_size_bytes(model)
    cpu_model = model if _is_cpu_fp32(model) else cpu_fp32_copy(model)
    cpu_inputs = lambda bs: to_device(make_inputs(bs), "cpu", torch.float32)  # noqa: E731
    # counted on the CPU copy: on CUDA, cuDNN's fused RNN kernels have no FLOP formula and a GRU would count as 0
    flops = count_flops(cpu_model, cpu_inputs(1), forward=forward)
    cost = {**params, "size_mb": size_bytes / 1e6, "size_bytes": size_bytes, **flops}

    latency: dict[str, Any] = {}
    if cpu_latency:
        latency["cpu"] = _latency_by_batch(cpu_model, cpu_inputs, batch_sizes, forward, runs, warmup)
    del cpu_model
    if device.type == "cuda":
        latency["cuda"] = {"device_name": torch.cuda.get_device_name(device),
                           **_latency_by_batch(model, make_inputs, batch_sizes, forward, runs, warmup)}

    mem_bs = max(batch_sizes)
    if device.type == "cuda":
        mem = inference_peak_memory(model, make_inputs(mem_bs), forward=forward)
        peak, delta = mem["peak_mb"], mem["delta_mb"]
    else:
        mem = tensor_memory(model, make_inputs(mem_bs), forward=forward)
        peak, delta = mem["peak_mb"], mem["activations_peak_mb"]
    # what a device that serves one input at a time must hold: parameters + peak activations at batch 1 (the input
    # itself is left out: it is the same for every model of a task)
    one = tensor_memory(model, make_inputs(1), forward=forward)
    model_mb = (one["weights_mb"] + one["activations_peak_mb"]
                if one["weights_mb"] is not None and one["activations_peak_mb"] is not None else None)
    memory = {"inference_peak_mb": peak, "inference_delta_mb": delta, "kind": mem["kind"], "batch_size": mem_bs,
              "model_memory_mb": model_mb}
    return {"cost": cost, "latency": latency, "memory": memory}
