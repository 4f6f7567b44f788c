"""Keyword-spotting quality for the binary keyword-vs-rest task. Accuracy hides the trade-off a wake-word detector
is tuned on (false alarms on other speech vs. missed keywords), so we also report the area under the
false-rejection vs false-alarm curve over every threshold and the miss rate at a false-alarm budget (1%)."""
from __future__ import annotations

import torch
from torch import Tensor

from leankd.errors import DataError
from leankd.measure.quality import classification_metrics

__all__ = ["FAR_TARGET", "binary_kws_metrics", "fa_fr_auc", "fa_fr_curve", "frr_at_far"]

FAR_TARGET = 0.01  # default false-alarm budget for `frr_at_far`: 1%


def fa_fr_curve(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(thresholds, false-alarm rates, false-rejection rates), float64, thresholds ascending.

    A clip fires when score >= threshold. FA = fraction of negatives that fire, FR = fraction of positives that do
    not. Thresholds are 0 (or the lowest score, if below 0), every distinct score, and +inf, so the curve runs from
    (FA=1, FR=0) to (FA=0, FR=1). One sort and a binary search: no loop over thresholds."""
    scores, targets = _check(scores, targets)
    order = torch.argsort(scores)
    s, t = scores[order], targets[order]
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    thresholds = torch.cat([torch.clamp(s[:1], max=0.0), torch.unique(s), inf]).unique()
    below = torch.searchsorted(s, thresholds, side="left")  # how many scores lie strictly below each threshold
    pos_below = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(t, 0)])[below]
    neg_below = below.to(torch.float64) - pos_below
    n_pos = t.sum()
    n_neg = t.numel() - n_pos
    return thresholds, (n_neg - neg_below) / n_neg, pos_below / n_pos


def fa_fr_auc(scores: Tensor, targets: Tensor) -> float:
    """Area under FR as a function of FA (trapezoid): 0 for a perfect detector, ~0.5 for random scores, 1 for an
    inverted one. Lower is better."""
    _, fa, fr = fa_fr_curve(scores, targets)
    return float(((fa[:-1] - fa[1:]) * (fr[:-1] + fr[1:]) / 2).sum())


def frr_at_far(scores: Tensor, targets: Tensor, far: float = FAR_TARGET) -> float:
    """The lowest false-rejection rate of any threshold whose false-alarm rate is <= `far`."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be a rate in [0, 1], got {far!r}")
    _, fa, fr = fa_fr_curve(scores, targets)
    return float(fr[fa <= far + 1e-12].min())


def binary_kws_metrics(logits: Tensor, targets: Tensor, class_names: list[str], far: float = FAR_TARGET) -> dict:
    """`classification_metrics` plus `fa_fr_auc`, `frr_at_far` (the false-rejection rate at false-alarm rate `far`)
    and `far_target` (= `far`), from logits [N, 2] whose column 1 is the keyword. The score is the logit margin
    (keyword - other), computed in fp32 on CPU: it ranks clips exactly like the softmax probability but never
    saturates (fp32 softmax rounds every margin above ~17 to 1.0, tying confident false alarms with true keywords).
    With only one class present (a tiny split) the FA/FR values are None, not an error.
    (Key names match `report.schema.Quality`, which rejects unknown keys.)"""
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"binary keyword spotting needs logits of shape [N, 2], got {tuple(logits.shape)}")
    metrics = classification_metrics(logits, targets, class_names)
    logits = logits.detach().to("cpu", torch.float32)
    scores = logits[:, 1] - logits[:, 0]
    targets = targets.detach().to("cpu")
    n_pos = int((targets == 1).sum())
    if 0 < n_pos < targets.numel():
        metrics.update(fa_fr_auc=fa_fr_auc(scores, targets), frr_at_far=frr_at_far(scores, targets, far))
    else:
        metrics.update(fa_fr_auc=None, frr_at_far=None)
    metrics["far_target"] = float(far)
    return metrics


def _check(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    targets = torch.as_tensor(targets).detach().to("cpu")
    if scores.dim() != 1 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be [N], got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; check the model's logits")
    targets = targets.to(torch.float64)
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must be 0 (other) or 1 (keyword)")
    n_pos = int(targets.sum())
    if n_pos == 0 or n_pos == targets.numel():
        raise DataError(f"FA/FR needs both classes: got {n_pos} keyword and {targets.numel() - n_pos} other samples")
    return scores, targets
