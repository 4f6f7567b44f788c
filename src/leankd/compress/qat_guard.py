"""Divergence watch for quantization-aware distillation: QAT must never collapse silently.

Why: fake-quantized fine-tuning starts from a BatchNorm-folded network, whose convolutions no longer renormalize
their outputs, so a learning rate that was gentle for the float student can blow it up (seen: a 95.1 % ResNet-8
KD student ended at 8.9 % with loss 23.4 after one QAT epoch, while the same fine-tuning in fp32 kept 95.2 %). The
target therefore measures where QAT starts - the loss of the fake-quantized student before any step, and its
accuracy, which is what int8-static (PTQ) computes - and stops an attempt as soon as
  - the loss is not finite, or its running mean rises above `loss_factor` x its start, or
  - after an epoch, the accuracy is more than a margin below the start (the recipe's points, or two binomial standard
    errors of the reference split when that is more).
The caller (targets/qat_finetune.py) then retries at a lower lr and finally keeps the int8-static model, saying so.

The accuracy is read on the validation split (the loop's own per-epoch row) or, without one (or when the report is
measured on it), on up to `TRAIN_CHECK_BATCHES` un-augmented training batches: never on the report's split.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import islice
from typing import Any, Optional

import torch
from torch import nn

from ..core import dist
from ..tasks.base import Task
from ..train.loop import ProgressHook, autocast_context, loss_inputs

START_LOSS_BATCHES = 8  # training batches the starting loss is averaged over (one batch alone is too noisy)
TRAIN_CHECK_BATCHES = 8  # x 256 un-augmented training examples: the accuracy check without a validation split
MIN_STEPS = 10  # steps into an epoch before its running loss is compared with the start (non-finite: at once)


class QATDiverged(Exception):
    """Raised from inside `fit` by `DivergenceWatch`; `reason` says what was seen, in words for the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class StartPoint:
    """Where QAT starts: the fake-quantized student before any optimizer step."""

    loss: float  # mean training loss over the first training batches (dropout on; observers and BatchNorm frozen)
    accuracy: Optional[float]  # None for regression tasks: then only the loss is watched
    split: str  # "val", or "train" (un-augmented, at most TRAIN_CHECK_BATCHES batches): never the report's split
    examples: int

    def margin_points(self, floor_points: float) -> float:
        """How far below the start QAT's accuracy may fall: `floor_points`, or two binomial standard errors of the
        starting accuracy on this many examples when that is more (small validation splits are noisy)."""
        if self.accuracy is None or self.examples <= 0:
            return floor_points
        se = math.sqrt(max(self.accuracy * (1 - self.accuracy), 0.0) / self.examples)
        return max(floor_points, 2 * 100 * se)


@torch.no_grad()
def check_accuracy(model: nn.Module, task: Task, split: str) -> tuple[Optional[float], int]:
    """(accuracy, examples) of `model` on `split` - the whole val split, or the first training batches."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    try:
        batches = task.eval_batches(split, 256)
        if split == "train":
            batches = islice(batches, TRAIN_CHECK_BATCHES)
        for batch in batches:
            logits.append(task.forward(model, batch.inputs).float().cpu())
            targets.append(batch.targets.cpu())
    finally:
        model.train(was_training)
    if not logits:
        return None, 0
    metrics = task.metrics(torch.cat(logits), torch.cat(targets))
    acc = metrics.get("accuracy")
    return (None if acc is None else float(acc)), int(sum(len(t) for t in targets))


@torch.no_grad()
def measure_start(model: nn.Module, task: Task, loss, teacher, batch_size: int, seed: int,
                  precision: str = "fp32") -> StartPoint:
    """The fake-quantized student's loss on the first training batches fit() will see, and its accuracy.

    The loss is taken in training mode (dropout on, as in the losses fit() reports: a student with heavy dropout
    would otherwise look diverged at its first step) with the observers and any unfolded BatchNorm frozen, so
    measuring moves no activation range and no running statistic."""
    from .qat import ActivationFakeQuant

    model.to(task.device)
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, (ActivationFakeQuant, nn.modules.batchnorm._BatchNorm)):
            m.eval()
    total, seen = 0.0, 0
    try:
        for batch in islice(task.train_batches(0, batch_size, seed), START_LOSS_BATCHES):
            with autocast_context(task.device, precision):
                logits = task.forward(model, batch.inputs)
            value = loss(loss_inputs(logits, batch, loss, teacher, None))
            total += float(value) * batch.size
            seen += batch.size
    finally:
        model.train(was_training)
    # never the split the report is measured on (a recipe may report on val): choosing QAT by it would leak it
    split = "val" if task.has_split("val") and getattr(task, "eval_split", "test") != "val" else "train"
    accuracy, examples = check_accuracy(model, task, split)
    return StartPoint(total / max(seen, 1), accuracy, split, examples)


class DivergenceWatch(ProgressHook):
    """A progress hook for `fit` that raises `QATDiverged` when the attempt diverges, passing every call on to the
    display hook it wraps (so the console still shows the epochs; a stopped epoch still gets its summary line)."""

    def __init__(self, start: StartPoint, model: nn.Module, task: Task, *, loss_factor: float,
                 margin_points: float, inner: Optional[Any] = None):
        self.start, self.model, self.task, self.inner = start, model, task, inner
        self.loss_factor = loss_factor
        self.margin = start.margin_points(margin_points)
        self.epoch, self.steps = 0, 0

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        if self.inner is not None:
            self.inner.start_epoch(epoch, epochs, steps)

    def on_other_ranks(self) -> "DivergenceWatch":
        """Under torchrun every rank watches (without a display): the ranks must stop the same attempt at the same
        step, or the ones still training would wait for the others at the next all-reduce."""
        quiet = copy.copy(self)
        quiet.inner = None
        return quiet

    def update(self, step: int, **m: float) -> None:
        if self.inner is not None:
            self.inner.update(step, **m)
        loss = m.get("loss")
        if loss is not None and dist.is_distributed():  # one decision for every rank: the running loss of the
            # global batches so far (each rank's running mean is over its equal share; their mean is the whole
            # batches'); non-finite anywhere is non-finite everywhere
            loss = float(dist.all_reduce_sum(torch.tensor([float(loss)], dtype=torch.float64))[0]) / dist.world_size()
        if loss is None:
            return
        reason = None
        if not math.isfinite(loss):
            reason = f"the training loss became {loss} at step {step} of epoch {self.epoch}"
        elif step >= min(MIN_STEPS, self.steps) and loss > self.loss_factor * self.start.loss:
            reason = (f"the training loss rose to {loss:.4g} (mean of the first {step} steps of epoch {self.epoch}), "
                      f"above {self.loss_factor:g} x its start {self.start.loss:.4g}")
        if reason is not None:
            if self.inner is not None:  # close the epoch's display before leaving the loop
                self.inner.end_epoch({"epoch": self.epoch, "train_loss": loss, "train_accuracy": m.get("accuracy"),
                                      "samples_per_s": m.get("samples_per_s", 0.0), "epoch_time_s": 0.0})
            raise QATDiverged(reason)

    def end_epoch(self, row: dict) -> None:
        if self.inner is not None:
            self.inner.end_epoch(row)
        loss = row.get("train_loss")
        if loss is not None and not math.isfinite(loss):
            raise QATDiverged(f"the training loss of epoch {row['epoch']} is {loss}")
        if self.start.accuracy is None:
            return
        accuracy = row.get("val_accuracy") if self.start.split == "val" else None  # rank 0's, on every rank
        if accuracy is None:  # the ranks hold the same weights: rank 0 checks, every rank takes its figure
            accuracy = dist.on_main(lambda: check_accuracy(self.model, self.task, self.start.split)[0])
        if accuracy is None:
            return
        drop = 100 * (self.start.accuracy - accuracy)
        if not math.isfinite(drop) or drop > self.margin:
            raise QATDiverged(f"after epoch {row['epoch']} the {self.start.split} accuracy is {100 * accuracy:.2f}%, "
                              f"{drop:.2f} points below the fake-quantized starting point "
                              f"({100 * self.start.accuracy:.2f}%, what int8-static computes; margin "
                              f"{self.margin:.2f} points)")
