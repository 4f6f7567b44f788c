"""Distillation losses: one small class each, composable with `+` and `*`, always computed in fp32.

Every loss takes a `LossInputs` (student logits, teacher logits, targets, and later named features) and
returns a scalar. `KD(temperature=4) * 0.9 + CE() * 0.1` builds a `WeightedSum`, whose `terms()` gives the
value of each named part for logging, so the training loop just sums and never asks which method runs.

Why fp32 always: under fp16, `softmax(z / T)` of large logits and tiny epsilons underflow; one of our reference
reports lost its score to exactly this. We upcast logits first and use `log_softmax` on both sides with
`kl_div(..., log_target=True)`, which needs no epsilon at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RecipeError


@dataclass
class LossInputs:
    """What a loss may look at. Feature dicts are filled only when a loss asks for taps (layer distillation)."""

    student: Tensor
    targets: Tensor
    teacher: Optional[Tensor] = None
    # a top-k teacher cache's compact rows (kd.topk.TopKLogits; None: every logit is the teacher's own). The token
    # divergences read them directly; `teacher` then holds their dense expansion only when a loss needs it
    # (`Loss.dense_teacher`), the stored k logits and a tail logit spread evenly over the other classes
    teacher_top_k: Optional[Any] = None
    student_features: dict = field(default_factory=dict)
    teacher_features: dict = field(default_factory=dict)
    epoch: Optional[int] = None  # the training epoch in progress, counted from 1 (None outside training): warm-ups
    epochs: Optional[int] = None  # the run's number of epochs (a warm-up given as a share of training reads it)
    # epochs done once this step's update is made, fractional (0.25: a quarter of the first epoch): a warm-up shorter
    # than an epoch still ramps step by step instead of starting at full weight (None outside training)
    progress: Optional[float] = None


class Loss(nn.Module):
    """Base class. Subclasses implement `compute(inputs) -> Tensor` and set `needs_teacher`.

    A feature loss (layer distillation) also names the modules it reads (`student_taps` / `teacher_taps`,
    module paths as `named_modules()` spells them); the training loop hooks them and fills
    `LossInputs.student_features` / `teacher_features` with their raw outputs. Losses with trainable parts
    (FitNets adapters) create them in `build`, which the loop calls once with the features of a probe batch
    before the optimizer exists; those parameters train with the student and are never part of it (dropped at
    export by construction)."""

    needs_teacher: bool = False

    def student_taps(self) -> list[str]:
        return []

    def teacher_taps(self) -> list[str]:
        return []

    def dense_teacher(self) -> bool:
        """True when the loss reads the teacher's dense logits; False when a top-k cache's compact rows
        (`LossInputs.teacher_top_k`) are enough, so the loop never expands them to [N, C]."""
        return self.needs_teacher

    def needs_attention_maps(self) -> bool:
        """True when the loss reads attention probabilities, which Hugging Face models only return with eager
        attention: the training loop then switches both models to eager while distilling."""
        return False

    def build(self, student_features: dict, teacher_features: dict) -> None:
        """Create shape-dependent trainable parts from one batch of features (default: nothing to build)."""

    def compute(self, inputs: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs: LossInputs) -> Tensor:
        return self.compute(inputs)

    def terms(self, inputs: LossInputs) -> dict[str, Tensor]:
        """Named, already weighted parts whose sum is the loss; a leaf loss is one part."""
        return {self.describe(): self.compute(inputs)}

    def describe(self) -> str:
        return type(self).__name__.lower()

    # composition -----------------------------------------------------------------------------------------
    def __add__(self, other: "Loss") -> "WeightedSum":
        if not isinstance(other, Loss):
            return NotImplemented
        return WeightedSum(_parts(self) + _parts(other))

    def __mul__(self, weight: float) -> "WeightedSum":
        if not isinstance(weight, (int, float)):
            return NotImplemented
        return WeightedSum([(w * float(weight), loss) for w, loss in _parts(self)])

    __rmul__ = __mul__


def _parts(loss: Loss) -> list[tuple[float, Loss]]:
    return list(loss.parts) if isinstance(loss, WeightedSum) else [(1.0, loss)]


class WeightedSum(Loss):
    """Σ wᵢ·lossᵢ. Built by `+` and `*`; flat (no nesting), so `describe()` reads like the formula."""

    def __init__(self, parts: list[tuple[float, Loss]]):
        super().__init__()
        self.weights = [float(w) for w, _ in parts]
        self.losses = nn.ModuleList([loss for _, loss in parts])

    @property
    def parts(self) -> list[tuple[float, Loss]]:
        return list(zip(self.weights, self.losses))

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return any(loss.needs_teacher for loss in self.losses)

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(n for loss in self.losses for n in loss.student_taps()))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(n for loss in self.losses for n in loss.teacher_taps()))

    def needs_attention_maps(self) -> bool:
        return any(loss.needs_attention_maps() for loss in self.losses)

    def dense_teacher(self) -> bool:
        return any(loss.dense_teacher() for loss in self.losses)

    def build(self, student_features: dict, teacher_features: dict) -> None:
        for loss in self.losses:
            loss.build(student_features, teacher_features)

    def terms(self, inputs: LossInputs) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for w, loss in self.parts:
            if w == 0.0:
                continue
            name = loss.describe()
            while name in out:
                name += "'"
            out[name] = w * loss.compute(inputs)
        return out

    def compute(self, inputs: LossInputs) -> Tensor:
        terms = self.terms(inputs)
        if not terms:
            return inputs.student.new_zeros((), dtype=torch.float32)
        return torch.stack(list(terms.values())).sum()

    def describe(self) -> str:
        return " + ".join(f"{_fmt(w)}*{loss.describe()}" if w != 1.0 else loss.describe() for w, loss in self.parts)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _teacher(inputs: LossInputs, who: str) -> Tensor:
    if inputs.teacher is None:
        raise ValueError(f"{who} needs teacher logits, but none were given (is the teacher configured?)")
    if inputs.teacher.shape != inputs.student.shape:
        raise ValueError(
            f"{who}: teacher logits {tuple(inputs.teacher.shape)} and student logits {tuple(inputs.student.shape)} "
            "differ in shape; teacher and student must predict the same classes"
        )
    return inputs.teacher.float()


UNLABELED = -100  # the target of an example with no label (augmented text): only the teacher's output teaches it


class CE(Loss):
    """Cross-entropy with the ground-truth labels (optional label smoothing).

    Examples whose target is UNLABELED add nothing: the sum over labeled examples is divided by the whole batch,
    so every example's loss is α·KD + (1−α)·CE·[labeled] (Tang et al.'s objective on an augmented transfer set);
    with every example labeled it is the ordinary mean."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def compute(self, inputs: LossInputs) -> Tensor:
        # sum / batch: the plain mean when every example is labeled, and no host sync to find out whether they are
        total = F.cross_entropy(inputs.student.float(), inputs.targets, label_smoothing=self.label_smoothing,
                                ignore_index=UNLABELED, reduction="sum")
        return total / inputs.targets.shape[0]

    def describe(self) -> str:
        return f"ce(ls={_fmt(self.label_smoothing)})" if self.label_smoothing else "ce"


class KD(Loss):
    """Hinton KD: KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch.

    The T² keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015)."""

    needs_teacher = True

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise RecipeError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def compute(self, inputs: LossInputs) -> Tensor:
        t = self.temperature
        teacher = _teacher(inputs, "KD")
        student_logp = F.log_softmax(inputs.student.float() / t, dim=-1)
        teacher_logp = F.log_softmax(teacher / t, dim=-1)
        return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean") * (t * t)

    def describe(self) -> str:
        return f"kd(T={_fmt(self.temperature)})"


class SoftCE(Loss):
    """Soft-target cross-entropy: −Σ softmax(t/T)·log softmax(s/T) · T².

    Equals KD plus the teacher's entropy (a constant for the student), so gradients match KD; some papers and
    tools report this form."""

    needs_teacher = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise RecipeError(f"SoftCE temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def compute(self, inputs: LossInputs) -> Tensor:
        t = self.temperature
        teacher_p = F.softmax(_teacher(inputs, "SoftCE") / t, dim=-1)
        student_logp = F.log_softmax(inputs.student.float() / t, dim=-1)
        return -(teacher_p * student_logp).sum(dim=-1).mean() * (t * t)

    def describe(self) -> str:
        return f"soft_ce(T={_fmt(self.temperature)})"


class MSE(Loss):
    """Mean squared error between student and teacher logits (Ba & Caruana 2014)."""

    needs_teacher = True

    def compute(self, inputs: LossInputs) -> Tensor:
        return F.mse_loss(inputs.student.float(), _teacher(inputs, "MSE"))

    def describe(self) -> str:
        return "mse_logits"


class LabelMSE(Loss):
    """Regression's ground-truth loss: mean squared error between the single output and the float label (STS-B).
    Unlabeled examples (target NaN: augmented texts) add nothing; as in CE, the sum is divided by the batch."""

    def compute(self, inputs: LossInputs) -> Tensor:
        out, targets = inputs.student.float().reshape(-1), inputs.targets.float().reshape(-1)
        if out.shape != targets.shape:
            raise ValueError(f"LabelMSE: {tuple(inputs.student.shape)} outputs for {targets.shape[0]} targets; a "
                             "regression model has one output")
        labeled = ~torch.isnan(targets)  # no host sync: unlabeled rows are masked, not filtered
        return ((out - targets.nan_to_num()) ** 2 * labeled).sum() / targets.shape[0]

    def describe(self) -> str:
        return "mse_labels"


def mix(alpha: float = 0.9, temperature: float = 4.0, label_smoothing: float = 0.0) -> WeightedSum:
    """The classic α-mix: α·KD(T) + (1−α)·CE."""
    if not 0.0 <= alpha <= 1.0:
        raise RecipeError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * KD(temperature) + (1.0 - alpha) * CE(label_smoothing)
