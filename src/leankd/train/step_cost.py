"""What each feature loss costs per training step: time and memory of one step with the logit loss alone and
with each feature term added, on the same batch, same model, same teacher.

Why a separate measurement: the KD stage's epoch time says what all its losses cost together; a user deciding
whether attention transfer is worth it needs the price of each term. A step here is forward (student + teacher
with its taps) + loss + backward; the optimizer update is left out (the same for every variant, adapters aside).
Time: median of `steps` timed steps after one warm-up, synchronized on CUDA, interleaved across the variants. Memory: on CUDA the allocator's peak
above the step's starting point; on CPU the peak of live tensor storages during the step (`measure.memory`).
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Optional

import torch
from torch import nn

from ..kd.losses import Loss
from ..measure.memory import _make_live_storage_counter
from ..tasks.base import Task
from .loop import _setup_feature_loss, _sync, autocast_context, loss_inputs


def _one_step(model: nn.Module, loss: Loss, taps, teacher, batch, task: Task, precision: str) -> None:
    with autocast_context(task.device, precision):
        logits = task.forward(model, batch.inputs)
    loss(loss_inputs(logits, batch, loss, teacher, taps)).backward()


class _Variant:
    """One loss on its own copy of the student, with its hooks; the shared teacher is re-tapped before each step."""

    def __init__(self, model: nn.Module, loss: Loss, task: Task, teacher):
        self.model = copy.deepcopy(model).to(task.device).train()
        self.loss = copy.deepcopy(loss)
        self.taps = _setup_feature_loss(self.loss, self.model, task, teacher)
        self.teacher_names = self.loss.teacher_taps()

    def step(self, teacher, batch, task: Task, precision: str, measure=None):
        if hasattr(teacher, "tap"):
            teacher.tap(self.teacher_names if self.taps is not None else [])
        self.model.zero_grad(set_to_none=True)
        if measure is not None:
            return measure(lambda: _one_step(self.model, self.loss, self.taps, teacher, batch, task, precision))
        _one_step(self.model, self.loss, self.taps, teacher, batch, task, precision)

    def close(self):
        if self.taps is not None:
            self.taps.close()


def _timed(device: torch.device):
    def run(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return 1000 * (time.perf_counter() - t0)
    return run


def step_costs(model: nn.Module, losses: list[Loss], task: Task, teacher, batch_size: int, precision: str = "fp32",
               steps: int = 10, seed: int = 0) -> list[dict]:
    """ms per step (median) and peak step memory of each loss, each on a copy of `model` (left untouched).

    The variants' steps are interleaved (round r times every variant once) on the same batch, so machine drift —
    a 2-core VM easily varies by 20 % over a minute — lands on all of them alike instead of on whichever ran last."""
    variants = []
    batch = next(iter(task.train_batches(0, batch_size, seed)))
    try:
        for loss in losses:
            variants.append(_Variant(model, loss, task, teacher))
        for v in variants:  # warm-up: lazy init, allocator, kernels
            v.step(teacher, batch, task, precision)
        times = [[] for _ in variants]
        for _ in range(steps):
            for v, t in zip(variants, times):
                t.append(v.step(teacher, batch, task, precision, measure=_timed(task.device)))
        rows = []
        for v, t in zip(variants, times):
            if hasattr(teacher, "tap"):
                teacher.tap(v.teacher_names if v.taps is not None else [])
            v.model.zero_grad(set_to_none=True)
            peak_mb, kind = _step_memory(v.model, v.loss, v.taps, teacher, batch, task, precision)
            rows.append({"loss": v.loss.describe(), "ms_per_step": round(statistics.median(t), 3),
                         "peak_mb": None if peak_mb is None else round(peak_mb, 3), "memory_kind": kind})
        return rows
    finally:
        for v in variants:
            v.close()
        if hasattr(teacher, "tap"):
            teacher.tap([])


def _step_memory(model, loss, taps, teacher, batch, task, precision) -> tuple[Optional[float], str]:
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)
        start = torch.cuda.memory_allocated(task.device)
        torch.cuda.reset_peak_memory_stats(task.device)
        _one_step(model, loss, taps, teacher, batch, task, precision)
        torch.cuda.synchronize(task.device)
        return (torch.cuda.max_memory_allocated(task.device) - start) / 1e6, "cuda_allocated_above_start"
    try:
        counter = _make_live_storage_counter()
    except Exception as exc:  # noqa: BLE001 - a private PyTorch API: report, never fail the run
        return None, f"not available: {type(exc).__name__}"
    with counter:
        _one_step(model, loss, taps, teacher, batch, task, precision)
    counter.close()
    if counter.error is not None:
        return None, f"not available: {type(counter.error).__name__}"
    return counter.peak_bytes / 1e6, "tensor_bytes"


def feature_costs(model: nn.Module, logit_loss: Loss, terms: list[Loss], task: Task, teacher, batch_size: int,
                  precision: str = "fp32", steps: int = 10, seed: int = 0) -> list[dict]:
    """The logit loss alone, then logit loss + each feature term: absolute and extra ms/step and MB."""
    rows = step_costs(model, [logit_loss] + [logit_loss + term for term in terms], task, teacher, batch_size,
                      precision, steps, seed)
    base = rows[0]
    base.update(extra_ms_per_step=0.0, extra_mb=0.0 if base["peak_mb"] is not None else None)
    for row, term in zip(rows[1:], terms):
        row["loss"] = term.describe()
        row["extra_ms_per_step"] = round(row["ms_per_step"] - base["ms_per_step"], 3)
        row["extra_mb"] = (round(row["peak_mb"] - base["peak_mb"], 3)
                           if row["peak_mb"] is not None and base["peak_mb"] is not None else None)
    return rows
