"""Decoupled KD (Zhao et al., CVPR 2022): KD split into a target-class part and a non-target-class part, weighted
on their own.

With b = [p_target, 1 - p_target] and p̂ the distribution over the non-target classes (renormalized), both at
temperature T, classic KD decomposes exactly as

    KD = TCKD + (1 - p_target^teacher) · NCKD,   TCKD = KL(b^t ‖ b^s),   NCKD = KL(p̂^t ‖ p̂^s),

so KD ties NCKD's weight to the teacher's confidence; DKD gives it its own weight: alpha·TCKD + beta·NCKD (× T²,
as KD). Both parts are computed from log-probabilities (logsumexp over the classes concerned), never as log of a
difference of probabilities, so a confident teacher does not underflow.

Warm-up as in the paper: the DKD term is scaled by min(progress / warmup, 1). The paper warms up 20 of 240 epochs,
ramping once per epoch; the default here is that share (1/12) of the stage's epochs, so a short CPU run is not spent
mostly in warm-up, and the ramp advances every step (progress = fractional epochs done): with epoch steps, a warm-up
under one epoch (any run under 12 epochs) started DKD at full weight, and at beta 8 (x T^2 = 128 on NCKD) a 10-epoch
CIFAR-10 run collapsed to chance in its first epoch. Examples without a label (augmented texts) take the teacher's top class as their target.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..losses import Loss, LossInputs, _fmt, _teacher
from ..registry import BuildContext, DistributionTerm, LossKind, register_loss, temperature_of, with_transform

PAPER_WARMUP_SHARE = 20 / 240


def decoupled_parts(student: Tensor, teacher: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-example (TCKD, NCKD) at `temperature`, without the T² factor; fp32 logits [B, C], C >= 2."""
    t = temperature
    zs, zt = student / t, teacher / t
    gt = F.one_hot(targets, zs.shape[-1]).bool()

    def binary_logp(z: Tensor) -> Tensor:  # log [p_target, 1 - p_target]
        all_ = torch.logsumexp(z, dim=-1)
        other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=-1)
        return torch.stack([z[gt] - all_, other - all_], dim=-1)

    def non_target_logp(z: Tensor) -> Tensor:  # log p̂ over the C - 1 other classes
        return F.log_softmax(z[~gt].view(z.shape[0], -1), dim=-1)

    bs, bt = binary_logp(zs), binary_logp(zt)
    tckd = (bt.exp() * (bt - bs)).sum(-1)
    ns, nt = non_target_logp(zs), non_target_logp(zt)
    nckd = (nt.exp() * (nt - ns)).sum(-1)
    return tckd, nckd


class DKD(Loss):
    """alpha·TCKD + beta·NCKD, × T², averaged over the batch, × the warm-up factor."""

    needs_teacher = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: Optional[float] = None):
        super().__init__()
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs = warmup_epochs

    def warmup_factor(self, inputs: LossInputs) -> float:
        if inputs.epoch is None:  # outside a training run (step cost, QAT fine-tuning of a trained student)
            return 1.0
        warmup = self.warmup_epochs
        if warmup is None:
            warmup = PAPER_WARMUP_SHARE * inputs.epochs if inputs.epochs else 0.0
        done = inputs.progress if inputs.progress is not None else inputs.epoch  # per step, or per epoch
        return 1.0 if warmup <= 0 else min(done / warmup, 1.0)

    def compute(self, inputs: LossInputs) -> Tensor:
        teacher = _teacher(inputs, "DKD")
        student = inputs.student.float()
        if student.shape[-1] < 2:
            raise ValueError("DKD needs at least 2 classes (it splits the target class from the others)")
        targets = torch.where(inputs.targets >= 0, inputs.targets, teacher.argmax(-1))
        tckd, nckd = decoupled_parts(student, teacher, targets, self.temperature)
        t2 = self.temperature ** 2
        return self.warmup_factor(inputs) * t2 * (self.alpha * tckd + self.beta * nckd).mean()

    def describe(self) -> str:
        warm = "paper" if self.warmup_epochs is None else _fmt(self.warmup_epochs)
        # ramp=step: the warm-up advances every step (it advanced per epoch before; a new name, so stages trained
        # with the old ramp are not reused as if they were this loss)
        return (f"dkd(a={_fmt(self.alpha)},b={_fmt(self.beta)},T={_fmt(self.temperature)},warmup={warm},ramp=step)")


class DKDTerm(DistributionTerm):
    kind: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target class vs the rest)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (among the non-target classes); the paper: 8 on "
                                               "CIFAR-100, 0.5 on ImageNet")
    warmup_epochs: Optional[float] = Field(None, ge=0, description="epochs over which the DKD term ramps up "
                                           "linearly; default 1/12 of the stage's epochs (the paper: 20 of 240); 0: "
                                           "none")


def _build(term: DKDTerm, ctx: BuildContext) -> Loss:
    return with_transform(DKD(term.alpha, term.beta, temperature_of(term, ctx), term.warmup_epochs), term, ctx)


register_loss(LossKind("dkd", DKDTerm, _build, summary="Decoupled KD (Zhao et al. 2022): alpha·TCKD + beta·NCKD"))
