"""What each feature loss costs per training step: time and memory of one step with the logit loss alone and
with each feature term added, on the same batch, same model, same teacher.

Why a separate measurement: the KD stage's epoch time says what all its losses cost together; a user deciding
whether attention transfer is worth it needs the price of each term. A step here is forward (student + teacher
with its taps) + loss + backward; the optimizer update is left out (the same for every variant, adapters aside).

Time: the shared timer (`measure.timing`: torch.utils.benchmark's `blocked_autorange` in interleaved rounds,
robust figure = median of per-round fastest blocks, noise flagged, machine load recorded).
Memory: on CUDA the allocator's peak above the step's starting point; on CPU live tensor storages counted by
`measure.memory`'s dispatch-mode counter, two figures: the step's peak, and the bytes held when the loss is
computed (everything autograd keeps for backward: kept feature maps, adapter activations). A feature term often
does not raise the peak (its tensors fit in the space the teacher's forward briefly used), but it always holds
memory for backward, so `extra_held_mb` shows what the peak cannot. Where no counter works the figures are None
with `memory_kind` "not measurable: ...", never 0.0.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..kd.losses import Loss
from ..measure.memory import _make_live_storage_counter
from ..measure.timing import machine_state, noise_reasons, summarize_rounds, time_interleaved
from ..tasks.base import Task
from .loop import _setup_feature_loss, _sync, autocast_context, loss_inputs


def _forward_loss(model: nn.Module, loss: Loss, taps, teacher, batch, task: Task, precision: str):
    with autocast_context(task.device, precision):
        logits = task.forward(model, batch.inputs)
    return loss(loss_inputs(logits, batch, loss, teacher, taps))


def _one_step(model: nn.Module, loss: Loss, taps, teacher, batch, task: Task, precision: str) -> None:
    _forward_loss(model, loss, taps, teacher, batch, task, precision).backward()


class _Variant:
    """One loss on its own copy of the student, with its hooks; the shared teacher is re-tapped before each step."""

    def __init__(self, model: nn.Module, loss: Loss, task: Task, teacher):
        self.model = copy.deepcopy(model).to(task.device).train()
        self.loss = copy.deepcopy(loss)
        self.taps = _setup_feature_loss(self.loss, self.model, task, teacher)
        self.teacher_names = self.loss.teacher_taps()

    def prepare(self, teacher) -> None:
        if hasattr(teacher, "tap"):
            teacher.tap(self.teacher_names if self.taps is not None else [])
        self.model.zero_grad(set_to_none=True)

    def step(self, teacher, batch, task: Task, precision: str) -> None:
        self.prepare(teacher)
        _one_step(self.model, self.loss, self.taps, teacher, batch, task, precision)
        _sync(task.device)

    def close(self):
        if self.taps is not None:
            self.taps.close()


def step_costs(model: nn.Module, losses: list[Loss], task: Task, teacher, batch_size: int, precision: str = "fp32",
               steps: int = 10, seed: int = 0, round_s: float = 0.05) -> list[dict]:
    """ms per step (robust figure) and step memory of each loss, each on a copy of `model` (left untouched).

    The variants' steps are interleaved (`measure.timing.time_interleaved`, at least `steps` timed steps each) on
    the same batch, so machine drift — a 2-core VM easily varies by 20 % over a minute — lands on all of them alike
    instead of on whichever ran last. Each row carries `reliable`/`noise`, the load average and thread settings."""
    variants = []
    batch = next(iter(task.train_batches(0, batch_size, seed)))
    try:
        for loss in losses:
            variants.append(_Variant(model, loss, task, teacher))
        fns = {i: (lambda v=v: v.step(teacher, batch, task, precision)) for i, v in enumerate(variants)}
        samples = time_interleaved(fns, calls=steps, rounds=max(1, min(3, steps)), warmup=1, round_s=round_s)
        state = machine_state()
        rows = []
        for i, v in enumerate(variants):
            stats = summarize_rounds(samples[i])
            reasons = noise_reasons(stats, "step time")
            v.prepare(teacher)
            memory = _step_memory(v.model, v.loss, v.taps, teacher, batch, task, precision)
            rows.append({"loss": v.loss.describe(), "ms_per_step": round(stats["median_ms"], 3), **memory,
                         "reliable": not reasons, "noise": reasons, **state})
        return rows
    finally:
        for v in variants:
            v.close()
        if hasattr(teacher, "tap"):
            teacher.tap([])


def _mb(x: Optional[int]) -> Optional[float]:
    return None if x is None else round(x / 1e6, 3)


def _step_memory(model, loss, taps, teacher, batch, task, precision) -> dict:
    """`{"peak_mb", "held_mb", "memory_kind"}` of one step (see the module docstring)."""
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)
        start = torch.cuda.memory_allocated(task.device)
        torch.cuda.reset_peak_memory_stats(task.device)
        value = _forward_loss(model, loss, taps, teacher, batch, task, precision)
        torch.cuda.synchronize(task.device)
        held = torch.cuda.memory_allocated(task.device) - start
        value.backward()
        torch.cuda.synchronize(task.device)
        return {"peak_mb": _mb(torch.cuda.max_memory_allocated(task.device) - start), "held_mb": _mb(held),
                "memory_kind": "cuda_allocated_above_start"}
    try:
        counter = _make_live_storage_counter()
    except Exception as exc:  # noqa: BLE001 - a private PyTorch API: report, never fail the run
        return {"peak_mb": None, "held_mb": None, "memory_kind": f"not measurable: {type(exc).__name__}"}
    try:
        with counter:
            value = _forward_loss(model, loss, taps, teacher, batch, task, precision)
            held = counter.live_bytes
            value.backward()
            del value
    finally:
        counter.close()
    if counter.error is not None:
        return {"peak_mb": None, "held_mb": None, "memory_kind": f"not measurable: {type(counter.error).__name__}"}
    return {"peak_mb": _mb(counter.peak_bytes), "held_mb": _mb(held), "memory_kind": "tensor_bytes"}


def feature_costs(model: nn.Module, logit_loss: Loss, terms: list[Loss], task: Task, teacher, batch_size: int,
                  precision: str = "fp32", steps: int = 10, seed: int = 0) -> list[dict]:
    """The logit loss alone, then logit loss + each feature term: absolute and extra ms/step and MB (at the step's
    peak and held for backward); extra MB is None, not 0.0, where memory was not measurable."""
    rows = step_costs(model, [logit_loss] + [logit_loss + term for term in terms], task, teacher, batch_size,
                      precision, steps, seed)
    base = rows[0]

    def extra(row: dict, key: str) -> Optional[float]:
        return round(row[key] - base[key], 3) if row[key] is not None and base[key] is not None else None

    base.update(extra_ms_per_step=0.0, extra_mb=0.0 if base["peak_mb"] is not None else None,
                extra_held_mb=0.0 if base["held_mb"] is not None else None)
    for row, term in zip(rows[1:], terms):
        row["loss"] = term.describe()
        row["extra_ms_per_step"] = round(row["ms_per_step"] - base["ms_per_step"], 3)
        row["extra_mb"], row["extra_held_mb"] = extra(row, "peak_mb"), extra(row, "held_mb")
    return rows
