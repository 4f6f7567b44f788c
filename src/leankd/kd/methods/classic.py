"""The classic logit losses: cross-entropy with the labels, Hinton KD, soft-target cross-entropy and logit MSE
(Ba & Caruana). The loss classes are in kd/losses.py (Python users compose them directly); this file gives them
their recipe names and parameters."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..losses import CE, KD, MSE, LabelMSE, SoftCE
from ..registry import BuildContext, DistributionTerm, LossKind, LossTerm, register_loss, temperature_of, with_transform


class CETerm(LossTerm):
    kind: Literal["ce"] = "ce"
    label_smoothing: Optional[float] = Field(None, ge=0, lt=1, description="default: the stage's train.label_smoothing")


def _ce(term: CETerm, ctx: BuildContext):
    if ctx.regression:  # the task's label loss: the squared error to the label
        return LabelMSE()
    return CE(term.label_smoothing if term.label_smoothing is not None else ctx.label_smoothing)


class KDTerm(DistributionTerm):
    kind: Literal["kd"] = "kd"


class SoftCETerm(DistributionTerm):
    kind: Literal["soft_ce"] = "soft_ce"


class MSETerm(LossTerm):
    kind: Literal["mse"] = "mse"


register_loss(LossKind("ce", CETerm, _ce, uses_teacher=False, compares_distributions=False,
                       summary="cross-entropy with the labels (the squared error for a regression task)"))
register_loss(LossKind("kd", KDTerm, lambda t, ctx: with_transform(KD(temperature_of(t, ctx)), t, ctx),
                       summary="Hinton et al. 2015: KL(teacher || student) at temperature T, x T^2"))
register_loss(LossKind("soft_ce", SoftCETerm, lambda t, ctx: with_transform(SoftCE(temperature_of(t, ctx)), t, ctx),
                       summary="soft-target cross-entropy (KD plus the teacher's entropy: same gradients)"))
register_loss(LossKind("mse", MSETerm, lambda t, ctx: MSE(), compares_distributions=False,
                       summary="Ba & Caruana 2014: squared error between the logits (regression: the outputs)"))
