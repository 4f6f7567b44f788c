"""Token-level divergences for language-model distillation: forward KL, reverse KL (MiniLLM), generalized JSD (GKD),
skew KL / skew reverse KL (DistiLLM) and total variation, over rows of [N, V] logits.

A row is one prediction: a causal LM's positions flattened ([B, L, V] -> [B·L, V]), or one example of a
classifier. Three things differ from the classic `kd` term, and are why these are their own kinds instead of `kd`
with options (`kd` keeps its batch mean over every row, so runs made with it keep their stage fingerprints):

- masked: rows whose target is the ignore index (-100, as in F.cross_entropy: a causal LM's padding) count for
  nothing, and the loss is the mean over the *unmasked rows* — per token, not per sequence, so a long sequence
  weighs more than a short one (as TRL's GKD and DistiLLM normalize). All rows masked gives 0 (no tokens, no
  signal), never 0/0. Careful in a classification recipe: there -100 marks an unlabeled (augmented) example that
  only the teacher teaches; these losses skip it, `kd` does not.
- chunked: the fp32 softmaxes of a [N, V] batch with a 50k vocabulary are gigabytes, so rows are processed
  `chunk_rows` at a time and the gradient of each chunk is taken right away (the chunked-loss trick of Liger
  Kernel): no fp32 [N, V] intermediate ever exists; the one [N, V] tensor made is the gradient, in the logits' own
  dtype. `chunk_rows` changes memory, not the value, so it is not part of `describe()` (the stage fingerprint).
  A batch that fits one chunk (by default about 33M logits: any character-level step) is plain autograd.
- fp32 whatever the autocast dtype: each chunk is upcast and computed with autocast off, from log_softmax on both
  sides; mixtures are formed in log space (logaddexp), never as log of a sum of probabilities.

Temperature: both distributions are softmax(z / T). The KL-type divergences (forward, reverse, JSD, skew) are
multiplied by T², as Hinton KD is, so their gradients keep their size across temperatures (every one of them is
locally quadratic in the logit difference, which is Hinton's argument); at T = 1 (the usual LM setting) this is
nothing. TRL's GKD and DistiLLM do not scale: divide by T² to compare at T != 1. Total variation is not scaled (its
gradient shrinks as 1/T, not 1/T², and its users run it at T = 1).

The teacher's logits are a target: no gradient flows into them.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...errors import RecipeError
from ..losses import UNLABELED, Loss, LossInputs, _fmt
from ..registry import (RAW, TRANSFORMS, BuildContext, DistributionTerm, LogitTransform, LossKind, register_loss,
                        temperature_of)
from ..topk import student_top_k_log_probs, top_k_log_probs

# Chunks hold about this many logits: 2**25 x 4 bytes = 134 MB per fp32 chunk tensor, 4-8 of them alive at once
# (benchmarks/lm_divergences.py): 1,024 rows of a 32k vocabulary, 667 of GPT-2's 50k. A character or small-BPE
# vocabulary fits a whole step in one chunk, and a step in one chunk runs as plain autograd (no per-chunk gradient
# pass: on a 66k-parameter character student that pass was ~7 % of the step).
CHUNK_ELEMENTS = 2 ** 25


def rows_per_chunk(chunk_rows: Optional[int], vocab: int) -> int:
    """`chunk_rows` when set (the recipe's), else as many rows as CHUNK_ELEMENTS logits of this vocabulary."""
    return int(chunk_rows) if chunk_rows is not None else max(1, CHUNK_ELEMENTS // max(int(vocab), 1))


def token_mean(rows, student: Tensor, teacher: Tensor, targets: Tensor, chunk_rows: Optional[int] = None,
               classes: Optional[Tensor] = None) -> Tensor:
    """Σ rows(student_chunk, teacher_chunk) over the unmasked rows / their number (0 when none), in fp32.

    `rows(s, t)` maps [c, V] student logits (any dtype) and the teacher's [c, W] rows (its logits, W = V, or a top-k
    cache's compact rows) to [c] fp32 values. `targets` has one entry per row (any shape whose size is N); entries
    equal to -100 mask their row. `chunk_rows`: rows per chunk (None: `rows_per_chunk`). `classes` [N, k]: a top-k
    teacher's stored classes, passed on to `rows(s, t, classes)` chunk by chunk."""
    vocab = student.shape[-1]
    chunk_rows = rows_per_chunk(chunk_rows, vocab)
    s = student.reshape(-1, vocab)
    t = teacher.detach().reshape(s.shape[0], -1)
    keep = targets.reshape(-1) != UNLABELED
    if keep.numel() != s.shape[0]:
        raise ValueError(f"token divergence: {keep.numel()} targets for {s.shape[0]} rows of logits "
                         f"{tuple(student.shape)}; give one target per position (-100 masks it)")
    count = keep.sum().clamp(min=1).to(torch.float32)  # a tensor op: no host sync
    rows = _by_chunk(rows, None if classes is None else classes.reshape(s.shape[0], -1))
    if torch.is_grad_enabled() and s.requires_grad and s.shape[0] <= chunk_rows:  # one chunk: plain autograd
        total = _masked_sum(rows, s, t, keep, slice(None))
    elif torch.is_grad_enabled() and s.requires_grad:
        total = _ChunkedSum.apply(s, t, keep, rows, int(chunk_rows))
    else:
        total = s.new_zeros((), dtype=torch.float32)
        for sl in _chunks(s.shape[0], chunk_rows):
            total = total + _masked_sum(rows, s[sl], t[sl], keep[sl], sl)
    return total / count


def _chunks(n: int, size: int):
    return (slice(i, i + size) for i in range(0, n, size))


def _by_chunk(rows, classes: Optional[Tensor]):
    """`rows(s, t)` as `f(s, t, sl)` of chunk `sl` (rows `sl` of the batch), with that chunk's stored top-k classes
    when the teacher has them."""
    if classes is None:
        return lambda s, t, sl: rows(s, t)
    return lambda s, t, sl: rows(s, t, classes[sl])


def _masked_sum(rows, s: Tensor, t: Tensor, keep: Tensor, sl: slice) -> Tensor:
    # masked rows are zeroed before the softmax, not only left out of the sum: padding logits may be NaN (a fully
    # masked attention row), and 0 x NaN in the backward pass would still reach the gradient
    drop = ~keep[:, None]
    s, t = s.masked_fill(drop, 0), t.masked_fill(drop, 0)
    with torch.autocast(s.device.type, enabled=False):
        return (rows(s, t, sl) * keep).sum()


class _ChunkedSum(torch.autograd.Function):
    """Σ of masked row values with the gradient computed chunk by chunk in the forward pass: autograd would
    otherwise keep every chunk's fp32 intermediates alive until backward, i.e. the whole [N, V] in fp32."""

    @staticmethod
    def forward(ctx, student, teacher, keep, rows, chunk_rows):
        grad = torch.empty_like(student)
        total = student.new_zeros((), dtype=torch.float32)
        for sl in _chunks(student.shape[0], chunk_rows):
            with torch.enable_grad():
                x = student[sl].detach().requires_grad_()
                value = _masked_sum(rows, x, teacher[sl], keep[sl], sl)
                (grad[sl],) = torch.autograd.grad(value, x)
            total += value.detach()
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable  # the gradient is precomputed: a second derivative is a clear error, not a silent zero
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def tail_as_bucket(log_p: Tensor, classes: Tensor) -> Tensor:
    """[N, V] log-probabilities -> [N, k + 1]: the k stored classes of a top-k teacher, then one bucket holding every
    other class's mass (its log-sum-exp). Both sides go through this, and the divergence compares the k + 1
    outcomes.

    Why: the cache knows the teacher's tail mass (its tail logit is the tail's log-mean-exp), not its shape. Spread
    evenly over the V - k classes and compared class by class, it taught the student a flat tail: at a 512-token BPE
    vocabulary a top-16 cache then kept almost none of dense KD's gain (benchmarks/lm_step_cost.py --bpe 512). Over
    the k + 1 outcomes the student's tail keeps its own shape (DistillKit's sparse KL, with the issue's tail bucket),
    and the gradient is exact for every divergence."""
    stored = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, classes, True)
    tail = log_p.masked_fill(stored, float("-inf")).logsumexp(dim=-1, keepdim=True)
    return torch.cat([log_p.gather(1, classes), tail], dim=1)


def _log_mix(log_a: Tensor, weight: float, log_b: Tensor) -> Tensor:
    """log(weight·a + (1 - weight)·b) from log a and log b, for 0 <= weight < 1."""
    if weight == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per row from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class TokenDivergence(Loss):
    """Base: a divergence between the teacher's and the student's softened distributions, per row, masked,
    chunked, in fp32 (see the module docstring). Subclasses give `rows_from(log_ps, log_pt)` and `name`."""

    needs_teacher = True
    name = "?"
    t_squared = True

    def __init__(self, temperature: float = 1.0, chunk_rows: Optional[int] = None,
                 transform: Optional[LogitTransform] = None):
        super().__init__()
        if temperature <= 0:
            raise RecipeError(f"{self.name} temperature must be > 0, got {temperature}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise RecipeError(f"{self.name} chunk_rows must be >= 1, got {chunk_rows}")
        self.temperature, self.transform = float(temperature), transform
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)

    def rows_from(self, log_ps: Tensor, log_pt: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _top_k_rows(self, s: Tensor, rows: Tensor) -> Tensor:
        """The divergence per row against a top-k teacher's compact rows: over its k stored classes and one tail
        bucket, with no [N, V] teacher tensor (see `tail_as_bucket` for why a bucket)."""
        z = s.float() if self.temperature == 1.0 else s.float() / self.temperature
        k = (rows.shape[1] - 1) // 2
        log_pt = top_k_log_probs(rows, z.shape[-1], self.temperature)
        return self.rows_from(student_top_k_log_probs(z, rows[:, k:2 * k].long()), log_pt)

    def _rows(self, s: Tensor, t: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        s, t = s.float(), t.float()
        if self.transform is not None:  # a logit transform works row by row, so per chunk is exact
            s, t = self.transform.apply(s), self.transform.apply(t)
        temp = self.temperature
        log_ps, log_pt = F.log_softmax(s / temp, dim=-1), F.log_softmax(t / temp, dim=-1)
        if classes is not None and classes.shape[-1] < s.shape[-1]:
            log_ps, log_pt = tail_as_bucket(log_ps, classes), tail_as_bucket(log_pt, classes)
        return self.rows_from(log_ps, log_pt)

    def dense_teacher(self) -> bool:
        """A logit transform (standardization) needs the teacher's every logit; otherwise the compact top-k rows do."""
        return self.transform is not None

    def compute(self, inputs: LossInputs) -> Tensor:
        top = inputs.teacher_top_k
        if top is not None and not self.dense_teacher() and top.k < top.num_classes:
            if top.shape != inputs.student.reshape(-1, inputs.student.shape[-1]).shape:
                raise ValueError(f"{self.name}: the top-k teacher's rows stand for logits {tuple(top.shape)}, the "
                                 f"student's logits are {tuple(inputs.student.shape)}; teacher and student must share "
                                 "the vocabulary")
            value = token_mean(self._top_k_rows, inputs.student, top.rows, inputs.targets, self.chunk_rows)
            return value * (self.temperature ** 2) if self.t_squared else value
        if inputs.teacher is None and top is not None:
            inputs.teacher = top.dense()
        if inputs.teacher is None:
            raise ValueError(f"{self.name} needs teacher logits, but none were given (is the teacher configured?)")
        if inputs.teacher.shape != inputs.student.shape:
            raise ValueError(f"{self.name}: teacher logits {tuple(inputs.teacher.shape)} and student logits "
                             f"{tuple(inputs.student.shape)} differ in shape; teacher and student must share the "
                             "vocabulary")
        classes = None if top is None else top.classes
        value = token_mean(self._rows, inputs.student, inputs.teacher, inputs.targets, self.chunk_rows, classes)
        return value * (self.temperature ** 2) if self.t_squared else value

    def params(self) -> str:
        return ""

    def describe(self) -> str:
        tag = f",{self.transform.tag}" if self.transform is not None else ""
        return f"{self.name}({self.params()}T={_fmt(self.temperature)}{tag})"


class ForwardKL(TokenDivergence):
    """KL(p_t ‖ p_s): mass-covering; `kd`'s divergence, per token and masked."""

    name = "forward_kl"

    def rows_from(self, log_ps, log_pt):
        return _kl_rows(log_pt, log_ps)


class ReverseKL(TokenDivergence):
    """KL(p_s ‖ p_t): mode-seeking (MiniLLM, Gu et al. 2024, optimizes it at the sequence level)."""

    name = "reverse_kl"

    def rows_from(self, log_ps, log_pt):
        return _kl_rows(log_ps, log_pt)


class GeneralizedJSD(TokenDivergence):
    """GKD's JSD(β) (Agarwal et al. 2024, eq. 1; TRL's generalized_jsd_loss): with m = β·p_t + (1−β)·p_s,
    β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m). β weights the teacher's side. As β→0 it is ≈ β·KL(p_t ‖ p_s) and as β→1
    ≈ (1−β)·KL(p_s ‖ p_t), so it vanishes at both ends: TRL special-cases β = 0 / 1 as the plain KLs; here those are
    `forward_kl` / `reverse_kl` and β must lie strictly between 0 and 1."""

    name = "jsd"

    def __init__(self, beta: float = 0.5, **kw):
        super().__init__(**kw)
        if not 0.0 < beta < 1.0:
            raise RecipeError(f"jsd beta must be strictly between 0 and 1, got {beta}: {_JSD_ENDS}")
        self.beta = float(beta)

    def rows_from(self, log_ps, log_pt):
        b = self.beta
        log_m = torch.logaddexp(log_pt + math.log(b), log_ps + math.log1p(-b))
        return b * _kl_rows(log_pt, log_m) + (1 - b) * _kl_rows(log_ps, log_m)

    def params(self):
        return f"b={_fmt(self.beta)},"


class SkewKL(TokenDivergence):
    """DistiLLM's skew KL (Ko et al. 2024): KL(p_t ‖ α·p_t + (1−α)·p_s); α = 0 is forward KL. The skew bounds the
    log-ratio by log(1/α), which keeps gradients finite where the student gives a teacher token ~0 probability."""

    name = "skew_kl"

    def __init__(self, alpha: float = 0.1, **kw):
        super().__init__(**kw)
        if not 0.0 <= alpha < 1.0:
            raise RecipeError(f"{self.name} alpha must be in [0, 1), got {alpha} (alpha 1 compares a distribution "
                              "with itself: always 0)")
        self.alpha = float(alpha)

    def rows_from(self, log_ps, log_pt):
        return _kl_rows(log_pt, _log_mix(log_pt, self.alpha, log_ps))

    def params(self):
        return f"a={_fmt(self.alpha)},"


class SkewReverseKL(SkewKL):
    """DistiLLM's skew reverse KL: KL(p_s ‖ α·p_s + (1−α)·p_t); α = 0 is reverse KL."""

    name = "skew_reverse_kl"

    def rows_from(self, log_ps, log_pt):
        return _kl_rows(log_ps, _log_mix(log_ps, self.alpha, log_pt))


class TotalVariation(TokenDivergence):
    """0.5·Σ|p_t − p_s| per token (in [0, 1]; Wen et al. 2023 use it for LM distillation). Not scaled by T²."""

    name = "tvd"
    t_squared = False

    def rows_from(self, log_ps, log_pt):
        return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)


_JSD_ENDS = "at beta 0 and 1 the mixture equals one side and JSD is 0; for TRL's beta=0 use kind forward_kl, for " \
            "beta=1 kind reverse_kl"


# recipe names -----------------------------------------------------------------------------------------------------
class _TokenTerm(DistributionTerm):
    chunk_rows: Optional[int] = Field(None, ge=1, description="rows (tokens) per fp32 chunk: memory, not the value "
                                      "(default: about 33M logits a chunk, e.g. 1,024 rows of a 32k vocabulary)")


class ForwardKLTerm(_TokenTerm):
    kind: Literal["forward_kl"] = "forward_kl"


class ReverseKLTerm(_TokenTerm):
    kind: Literal["reverse_kl"] = "reverse_kl"


class JSDTerm(_TokenTerm):
    kind: Literal["jsd"] = "jsd"
    beta: float = Field(0.5, description="weight of the teacher's side; the mixture is beta·p_t + (1-beta)·p_s")

    @field_validator("beta")
    @classmethod
    def _inside(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"beta must be strictly between 0 and 1, got {v}: {_JSD_ENDS}")
        return v


class SkewKLTerm(_TokenTerm):
    kind: Literal["skew_kl"] = "skew_kl"
    alpha: float = Field(0.1, ge=0, lt=1, description="share of the teacher in the mixture (DistiLLM: 0.1)")


class SkewReverseKLTerm(_TokenTerm):
    kind: Literal["skew_reverse_kl"] = "skew_reverse_kl"
    alpha: float = Field(0.1, ge=0, lt=1, description="share of the student in the mixture (DistiLLM: 0.1)")


class TVDTerm(_TokenTerm):
    kind: Literal["tvd"] = "tvd"


def _common(term: _TokenTerm, ctx: BuildContext) -> dict:
    name = term.transform if term.transform is not None else ctx.transform
    return {"temperature": temperature_of(term, ctx), "chunk_rows": term.chunk_rows,
            "transform": None if name == RAW else TRANSFORMS.get(name)}


register_loss(LossKind("forward_kl", ForwardKLTerm, lambda t, ctx: ForwardKL(**_common(t, ctx)),
                       summary="KL(teacher || student) per token, masked, chunked, x T^2"))
register_loss(LossKind("reverse_kl", ReverseKLTerm, lambda t, ctx: ReverseKL(**_common(t, ctx)),
                       summary="KL(student || teacher) per token (MiniLLM, Gu et al. 2024), x T^2"))
register_loss(LossKind("jsd", JSDTerm, lambda t, ctx: GeneralizedJSD(t.beta, **_common(t, ctx)),
                       summary="generalized JSD(beta) per token (GKD, Agarwal et al. 2024), x T^2"))
register_loss(LossKind("skew_kl", SkewKLTerm, lambda t, ctx: SkewKL(t.alpha, **_common(t, ctx)),
                       summary="skew KL(teacher || a*teacher + (1-a)*student) (DistiLLM, Ko et al. 2024), x T^2"))
register_loss(LossKind("skew_reverse_kl", SkewReverseKLTerm, lambda t, ctx: SkewReverseKL(t.alpha, **_common(t, ctx)),
                       summary="skew KL(student || a*student + (1-a)*teacher) (DistiLLM, Ko et al. 2024), x T^2"))
register_loss(LossKind("tvd", TVDTerm, lambda t, ctx: TotalVariation(**_common(t, ctx)),
                       summary="total variation 0.5*sum|p_t - p_s| per token (not scaled by T^2)"))
