"""A recipe's `distill:` section -> the `Loss` a stage trains with: the one place that turns recipe terms into
loss objects (through the registries of kd/registry.py), so the pipeline and the task kinds' own stages (seq2seq)
build losses the same way without importing each other."""
from __future__ import annotations

from typing import Optional

from ..core.task import Task
from ..errors import RecipeError
from ..recipe import DistillConfig
from .losses import CE, LabelMSE, Loss
from .registry import LOGIT_LOSSES, BuildContext, build_logit_loss, default_terms, feature_loss


def build_loss(cfg: DistillConfig, label_smoothing: float = 0.0,
               feature_pairs: Optional[list[list[tuple[str, str]]]] = None, regression: bool = False, *,
               task: Optional[Task] = None) -> Loss:
    """The recipe's logit loss plus its feature (layer) terms. `feature_pairs` gives the resolved pairs of each
    `distill.features` term (needed for `pairs: auto`); None = logits only (the logit-KD control). `regression`:
    one output per example, so KD is the MSE to the teacher's output and "ce" the MSE to the label; `task`: the
    task the loss trains on, which says so itself (`Task.regression`), so a caller need not know which tasks do."""
    total = logit_loss(cfg, label_smoothing, regression, task=task)
    for term in feature_terms(cfg, feature_pairs or []):
        total = total + term
    return total


def feature_terms(cfg: DistillConfig, feature_pairs: list[list[tuple[str, str]]]) -> list[Loss]:
    """`weight * kind(pairs)` for each `distill.features` term, with its resolved pairs."""
    return [term.weight * feature_loss(term.kind, pairs) for term, pairs in zip(cfg.features, feature_pairs)]


def guide_temperature(cfg: DistillConfig) -> float:
    """The temperature dense guides are averaged at: that of the recipe's first temperature-taking term."""
    for term in cfg.loss or []:
        if "temperature" in type(term).model_fields:
            return term.temperature or cfg.temperature
    return cfg.temperature


def _one_output(regression: bool, task: Optional[Task]) -> bool:
    """Whether the loss trains one float output per example (`Task.regression`, e.g. a similarity score) rather than
    class logits: then the labels are learned by squared error and no term may compare class distributions."""
    return regression or (task is not None and task.regression)


def supervised_loss(label_smoothing: float, regression: bool = False, *, task: Optional[Task] = None) -> Loss:
    """What a model trained alone learns from: cross-entropy, or the squared error for regression (`regression`, or
    a `task` with one output per example)."""
    return LabelMSE() if _one_output(regression, task) else CE(label_smoothing)


def logit_loss(cfg: DistillConfig, label_smoothing: float, regression: bool = False, *,
               task: Optional[Task] = None) -> Loss:
    """The recipe's logit loss, every term built by its registered kind. No `distill.loss`: the classic alpha-mix
    (for a regression task alpha x mse + (1 - alpha) x the label's squared error, Tang et al.). `task`: as in
    `build_loss`."""
    regression = _one_output(regression, task)
    ctx = BuildContext(temperature=cfg.temperature, label_smoothing=label_smoothing, transform=cfg.transform,
                       regression=regression)
    if cfg.loss is not None:
        terms = cfg.loss
    elif regression:
        terms = [LOGIT_LOSSES.get("mse").params(kind="mse", weight=cfg.alpha),
                 LOGIT_LOSSES.get("ce").params(kind="ce", weight=1.0 - cfg.alpha)]
    else:
        terms = default_terms(cfg.alpha)
    try:
        return build_logit_loss(terms, ctx)
    except ValueError as e:
        raise RecipeError(str(e)) from None
