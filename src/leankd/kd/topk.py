"""Top-k teacher logits: what a many-class (language-model) teacher cache stores per row instead of every logit.

Two forms. `compress_top_k` gives fp32 rows [B, 2k + 1] (the k largest logits, their indices as floats, one tail
logit): the form a build computes, sums across ranks and `expand_top_k` turns back into dense logits. On disk the
same rows are packed by `pack_top_k` into one numpy record per row, 4k + 4 bytes with a vocabulary under 65,536
(84 bytes at k = 20, against 8k + 4 = 164 for the fp32 rows):

  top      float32        the largest logit, exact
  rest     float16 [k-1]  the other k - 1 top logits minus `top`
  indices  uint16 [k]     their classes (int32 for larger vocabularies)
  tail     float16        the tail logit minus `top`

Why relative to the largest logit: a language model's logits sit far from 0 (often 20-40), where fp16 steps are
0.016-0.03; a logit minus the row's maximum is exact at the maximum and finest where the probability is largest.
On V = 1000, k = 20 the KL from the fp32 rows' distribution is ~2e-7 nats on large-offset logits against ~2e-5 for
fp16 of the raw values (and the fp32 top value costs the same 4 bytes an fp32 tail would). The tail can be fp16 for
the same reason: relative to `top` it is coarse (0.03 at 32..64 below) only where its mass is e^-32 of the top
class's, and fine where the tail carries weight. Unpacking adds `top`
back in fp32, so expanded logits keep their magnitude (losses that read raw logits see the values they would).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

UINT16_CLASSES = 2 ** 16  # class indices 0 .. 65,535 fit a uint16
_FP16_LOWEST = float(np.finfo(np.float16).min)  # differences below it are stored as it: probability 0 either way


def compress_top_k(logits: Tensor, k: int) -> Tensor:
    """[B, C] logits -> [B, 2k + 1] rows: the k largest logits (in descending order), their class indices (exact as
    fp32 below 2**24), and one "tail" logit that gives every other class an equal share of the remaining probability
    mass (T = 1), so `expand_top_k` keeps the top-k logits exactly and the softmax total right. Many-class tasks
    store ~2k+1 numbers per sample instead of C. The tail is the log-mean-exp of the other logits, not
    log(1 - top-k mass): a confident language model's top-k mass rounds to 1 in fp32, and that difference with it."""
    logits = logits.float()
    c = logits.shape[1]
    values, indices = logits.topk(k, dim=1)
    if c <= k:
        return torch.cat([values, indices.float(), values[:, -1:] - 30.0], dim=1)
    others = logits.scatter(1, indices, float("-inf"))
    tail = others.logsumexp(dim=1, keepdim=True) - math.log(c - k)
    return torch.cat([values, indices.float(), tail], dim=1)


def expand_top_k(rows: Tensor, k: int, num_classes: int) -> Tensor:
    """Inverse of `compress_top_k`: full [B, C] fp32 logits, the tail logit everywhere but the stored top-k classes.
    Row by row, so a caller short of memory (C = 50k: 200 KB per row) can expand a slice of rows at a time."""
    logits = rows[:, 2 * k:2 * k + 1].float().expand(-1, num_classes).clone()
    return logits.scatter_(1, rows[:, k:2 * k].long(), rows[:, :k].float())


def record_dtype(k: int, num_classes: int) -> np.dtype:
    """The numpy record of one packed row (see the module docstring)."""
    index = np.uint16 if num_classes <= UINT16_CLASSES else np.int32
    return np.dtype([("top", "<f4"), ("rest", "<f2", (k - 1,)), ("indices", np.dtype(index).newbyteorder("<"), (k,)),
                     ("tail", "<f2")])


def pack_top_k(rows: Tensor, k: int, dtype: np.dtype) -> np.ndarray:
    """fp32 rows of `compress_top_k` -> records of `dtype`. Row by row and deterministic, so packing a whole view at
    once (several ranks' sums) gives the same bytes as packing it batch by batch (one process)."""
    rows = rows.detach().float().cpu()
    top = rows[:, :1]
    out = np.empty(len(rows), dtype=dtype)
    out["top"] = top[:, 0].numpy()
    out["rest"] = (rows[:, 1:k] - top).clamp_min(_FP16_LOWEST).half().numpy()
    out["indices"] = rows[:, k:2 * k].long().numpy()
    out["tail"] = (rows[:, 2 * k] - top[:, 0]).clamp_min(_FP16_LOWEST).half().numpy()
    return out


def unpack_top_k(records: np.ndarray, k: int) -> Tensor:
    """Records -> the fp32 [B, 2k + 1] rows `expand_top_k` reads (fp32 arithmetic: no fp16 sums).

    numpy copies the float16 fields out as they are and torch widens them: numpy's own float16 -> float32 cast
    runs in software, torch's is vectorized."""
    n = len(records)
    field = lambda name: torch.from_numpy(np.ascontiguousarray(records[name]))  # noqa: E731
    top = field("top").float().reshape(n, 1)
    rest = field("rest").float().reshape(n, k - 1)
    indices = torch.from_numpy(np.asarray(records["indices"], dtype=np.float32)).reshape(n, k)  # exact below 2**24
    tail = field("tail").float().reshape(n, 1)
    return torch.cat([top, top + rest, indices, top + tail], dim=1)


class TopKLogits:
    """One batch of a top-k teacher cache, kept compact: the fp32 rows [N, 2k + 1] of `compress_top_k` for a task of
    `num_classes` classes. What a cached top-k teacher returns instead of dense logits.

    Why not dense: expanding to [N, V] fp32 (and then a softmax over it) costs the teacher's side as much memory and
    time as the student's logits, only to rebuild k + 1 numbers per row. The token divergences read the k stored
    logits and the tail bucket straight from these rows (`top_k_log_probs`); a loss that reads dense teacher logits (the
    classic `kd`, MSE on logits) gets them from `dense()`, which the training loop calls only for such losses."""

    __slots__ = ("rows", "k", "num_classes")

    def __init__(self, rows: Tensor, k: int, num_classes: int):
        if rows.dim() != 2 or rows.shape[1] != 2 * k + 1:
            raise ValueError(f"top-k rows must be [N, 2k + 1] = [N, {2 * k + 1}], got {tuple(rows.shape)}")
        self.rows, self.k, self.num_classes = rows, int(k), int(num_classes)

    @property
    def shape(self) -> torch.Size:
        """The shape of the dense logits these rows stand for."""
        return torch.Size((self.rows.shape[0], self.num_classes))

    @property
    def classes(self) -> Tensor:
        """[N, k] the stored classes (int64)."""
        return self.rows[:, self.k:2 * self.k].long()

    def select(self, rows: Tensor) -> "TopKLogits":
        """The same teacher outputs for a subset of the rows (a boolean mask or indices)."""
        return TopKLogits(self.rows[rows], self.k, self.num_classes)

    def dense(self) -> Tensor:
        """[N, C] fp32 logits: the stored k exactly, the tail logit everywhere else (`expand_top_k`)."""
        return expand_top_k(self.rows, self.k, self.num_classes)


def top_k_log_probs(rows: Tensor, num_classes: int, temperature: float = 1.0) -> Tensor:
    """[N, 2k + 1] rows -> [N, k + 1] fp32 log-probabilities of softmax(z / T) over the k stored classes and one bucket
    holding the other C - k classes. The bucket's logit is the tail logit (their log-mean-exp at T = 1) spread evenly,
    so the values equal `tail_as_bucket(log_softmax(expand_top_k(rows) / T))` without building the [N, C] logits."""
    k = (rows.shape[1] - 1) // 2
    rows = rows.float()
    others = num_classes - k
    spread = math.log(others) if others > 0 else float("-inf")
    z = torch.cat([rows[:, :k] / temperature, rows[:, 2 * k:] / temperature + spread], dim=1)
    return torch.log_softmax(z, dim=1)


def student_top_k_log_probs(z: Tensor, classes: Tensor) -> Tensor:
    """[N, C] fp32 scaled student logits and [N, k] classes -> [N, k + 1] log-probabilities over the k classes and the
    bucket of every other class (its log-sum-exp: the student's tail keeps its own shape). Exact, and differentiable
    in `z` (a hand-written backward: see `_StudentBuckets`)."""
    return _StudentBuckets.apply(z, classes)


class _StudentBuckets(torch.autograd.Function):
    """log q over k classes + one bucket, with the gradient in one fused expression instead of autograd's three
    [N, C] gradients (gather, the tail's log-sum-exp, the normalizer's) summed: fewer passes over the [N, C] logits,
    which is where a small student's loss spends its time (benchmarks/lm_loss_step.py).

    With g = dL/d log q and G = Σ g per row, p = softmax(z), q_tail = Σ_{j ∉ K} p_j:
      dL/dz_j = g_j - p_j·G                    (j one of the k classes)
      dL/dz_j = g_tail·p_j / q_tail - p_j·G    (every other j; p_j / q_tail = exp(z_j - log-sum-exp of the tail))"""

    @staticmethod
    def forward(ctx, z: Tensor, classes: Tensor) -> Tensor:
        lse = z.logsumexp(dim=1, keepdim=True)
        tail = z.scatter(1, classes, float("-inf")).logsumexp(dim=1, keepdim=True)
        ctx.save_for_backward(z, classes, lse, tail)
        return torch.cat([z.gather(1, classes), tail], dim=1) - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        z, classes, lse, tail = ctx.saved_tensors
        k = classes.shape[1]
        total = g.sum(dim=1, keepdim=True)
        p_total = (z - lse).exp_().mul_(total)  # p·G, in place: two [N, C] temporaries in all
        at_k = g[:, :k] - p_total.gather(1, classes)
        # exp(z - tail), not p·exp(lse - tail): the latter overflows when the tail's mass is below fp32's range
        grad = (z - tail).exp_().mul_(g[:, k:]).sub_(p_total)
        return grad.scatter_(1, classes, at_k), None
