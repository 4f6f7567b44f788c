"""Logit standardization (Sun et al., CVPR 2024): z-score each model's logits before the temperature softmax.

Classic KD with one shared temperature asks the student to match the teacher's logit *range* as well as their
ranking, which a small student may not be able to; standardizing each model's logits (per example: subtract the
mean, divide by the standard deviation) keeps only their relations. A switch on any distribution-comparing term:
`{kind: kd, transform: standardize}`, or `distill.transform: standardize` for every such term of the recipe
(the alpha-mix included). As in the paper's code, the standard deviation is the unbiased one, plus 1e-7.
"""
from __future__ import annotations

from torch import Tensor

from ..registry import LogitTransform, register_transform


def standardize(logits: Tensor) -> Tensor:
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + 1e-7)


register_transform(LogitTransform("standardize", standardize, tag="ls",
                                  summary="logit standardization (Sun et al. 2024): z-scored logits"))
