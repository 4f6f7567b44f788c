"""DIST (Huang et al., NeurIPS 2022): distil relations, not exact probabilities.

Matching the teacher's probabilities exactly (KL) is hard for a much smaller student; DIST asks only that the
student's predictions be linearly correlated with the teacher's: inter-class (each example's distribution over
classes, Pearson r row by row) and intra-class (each class's scores across the batch, column by column):

    loss = T² · (beta · (1 - mean_i r(p_s[i], p_t[i])) + gamma · (1 - mean_c r(p_s[:, c], p_t[:, c]))),

with p = softmax(z / T). Defaults: beta = gamma = 1 as in the authors' code; T defaults to distill.temperature
(their ImageNet runs use T = 1, CIFAR re-implementations T = 4).
The intra-class part needs a batch: with one example per batch it is constant.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..losses import Loss, LossInputs, _fmt, _teacher
from ..registry import BuildContext, DistributionTerm, LossKind, register_loss, temperature_of, with_transform

EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


class DIST(Loss):
    needs_teacher = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0):
        super().__init__()
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """(inter-class, intra-class) relation losses, without T² and weights."""
        t = self.temperature
        ps = F.softmax(inputs.student.float() / t, dim=-1)
        pt = F.softmax(_teacher(inputs, "DIST") / t, dim=-1)
        return 1 - pearson_rows(ps, pt).mean(), 1 - pearson_rows(ps.T, pt.T).mean()

    def compute(self, inputs: LossInputs) -> Tensor:
        inter, intra = self.parts(inputs)
        return self.temperature ** 2 * (self.beta * inter + self.gamma * intra)

    def describe(self) -> str:
        return f"dist(b={_fmt(self.beta)},g={_fmt(self.gamma)},T={_fmt(self.temperature)})"


class DISTTerm(DistributionTerm):
    kind: Literal["dist"] = "dist"
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per example)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per class, across the batch)")


def _build(term: DISTTerm, ctx: BuildContext) -> Loss:
    return with_transform(DIST(term.beta, term.gamma, temperature_of(term, ctx)), term, ctx)


register_loss(LossKind("dist", DISTTerm, _build, summary="DIST (Huang et al. 2022): inter- and intra-class "
                                                         "Pearson correlation of the predictions"))
