"""Choose the layers that matter for intermediate-layer distillation: pure math on captured features.

Three pieces, all on already-captured feature tensors (no hooks, no models, no I/O):

* similarity: linear CKA (Kornblith et al. 2019) between every student and teacher layer, in the Gram (n x n)
  form so flattened conv maps with 16k+ dims cost no more than a vector layer;
* importance: how much a teacher layer knows about the task, as the held-out accuracy of a closed-form ridge
  probe (or, cheaper, its CKA with the teacher's logits);
* matching: a monotonic student -> teacher pairing maximizing total CKA (dynamic programming), then the top-k
  pairs by CKA x importance.

Everything is computed in float64: CKA is a ratio of large sums, and the ridge solve is ill-conditioned enough
that fp32 changes the argmax of a probe on near-duplicate features.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DataError
from .taps import first_tensor

# Centered values this small relative to the raw ones are rounding noise of the mean: a constant representation.
_DEGENERATE = 1e-11


def _batch_size(feature) -> int:
    """Number of examples (dim 0), checked up front so mismatches are reported by layer name, before any math."""
    t = first_tensor(feature)
    if t.dim() == 0:
        raise ValueError("feature is a scalar; expected a batch of shape (n, ...)")
    return t.shape[0]


def as_matrix(feature) -> Tensor:
    """One captured output as an (n, d) float64 matrix: CKA compares examples, so all other dims are features."""
    t = first_tensor(feature).detach()
    x = t.reshape(_batch_size(t), -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("feature contains NaN or Inf values")
    return x


def _centered_gram(x: Tensor, debiased: bool = False) -> tuple[Tensor, float]:
    """Centered Gram matrix and its Frobenius norm (0.0 for a constant representation).

    Centering the columns of x before x x^T equals H K H with H = I - 11^T/n, at O(nd) instead of O(n^2 d).
    `debiased`: the unbiased HSIC centering (Song et al. 2012, as in Kornblith et al.'s reference code). Plain
    linear CKA drifts towards 1 when d >> n (two unrelated 16k-dim random layers score ~0.98 at n = 256), which
    would flatten the CKA table of flattened conv maps; the debiased estimate does not.
    """
    n = x.shape[0]
    if n < (4 if debiased else 2):
        raise DataError(f"CKA needs at least {4 if debiased else 2} examples, got n={n}")
    xc = x - x.mean(dim=0, keepdim=True)
    if xc.abs().max().item() <= _DEGENERATE * x.abs().max().item():  # also catches all-zero x
        return torch.zeros(n, n, dtype=x.dtype, device=x.device), 0.0
    kc = xc @ xc.T
    if debiased:  # U-statistic centering; HSIC_1 is unchanged by centering the features first
        kc.fill_diagonal_(0)
        means = kc.sum(dim=0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        kc = kc - means[:, None] - means[None, :]
        kc.fill_diagonal_(0)
    return kc, torch.linalg.matrix_norm(kc).item()


def _cka_from_grams(k: tuple[Tensor, float], l: tuple[Tensor, float]) -> float:
    """<Kc, Lc>_F / (|Kc| |Lc|). A constant representation carries no information about the examples, so its
    similarity to anything is 0 (the formula would be 0/0 = NaN, which would poison argmax and the DP)."""
    (kc, kn), (lc, ln) = k, l
    if kn == 0.0 or ln == 0.0:
        return 0.0
    value = torch.dot(kc.reshape(-1), lc.to(kc.device).reshape(-1)).item() / (kn * ln)
    return min(max(value, 0.0), 1.0)  # it is in [0, 1] mathematically; clip rounding


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA between x (n, d1) and y (n, d2): similarity of two layers that is invariant to rotation and
    isotropic scaling of either, so layers of different widths and bases can be compared."""
    x, y = as_matrix(x), as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides: x has n={x.shape[0]}, y has n={y.shape[0]}")
    return _cka_from_grams(_centered_gram(x, debiased), _centered_gram(y, debiased))


def cka_matrix(student: dict, teacher: dict, debiased: bool = False) -> Tensor:
    """(len(student), len(teacher)) float64 CKA table, rows/columns in dict order. Each layer's centered Gram
    matrix is built once, so the table costs m + n Gram matrices instead of m * n."""
    sizes = {f"{side} {name!r}": _batch_size(f)
             for side, feats in (("student", student), ("teacher", teacher)) for name, f in feats.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: n={v}" for k, v in sizes.items())
        raise ValueError(f"all layers must be captured on the same examples, got different batch sizes ({listed})")
    # one (n, n) Gram per layer; the (n, d) float64 copy of each layer is dropped as soon as its Gram exists
    s_grams = [_centered_gram(as_matrix(f), debiased) for f in student.values()]
    t_grams = [_centered_gram(as_matrix(f), debiased) for f in teacher.values()]
    out = torch.zeros(len(s_grams), len(t_grams), dtype=torch.float64)
    for i, sg in enumerate(s_grams):
        for j, tg in enumerate(t_grams):
            out[i, j] = _cka_from_grams(sg, tg)
    return out


def _pooled(feature) -> Tensor:
    """(n,C,H,W) -> global average pool -> (n,C); (n,L,H) -> mean over L -> (n,H); (n,d) as is. A probe on the
    pooled vector asks "does this layer know the class" without a d = C*H*W solve."""
    t = first_tensor(feature).detach().to(torch.float64)
    if t.dim() == 0:
        raise ValueError("feature is a scalar; expected a batch of shape (n, ...)")
    if t.dim() == 1:
        return t[:, None]
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        return t.mean(dim=1)
    return t.flatten(2).mean(dim=2)  # (n, C, *spatial): average over all spatial dims


def _ridge_fit_predict(xtr: Tensor, ytr: Tensor, xte: Tensor, ridge: float) -> Tensor:
    """Closed-form ridge on centered data; the dual (n x n) form when d > n keeps the solve small."""
    n, d = xtr.shape
    y_mean = ytr.mean(dim=0, keepdim=True)  # unpenalized intercept: x is centered, so it is just mean(y)
    yc = ytr - y_mean
    if d > n:
        alpha = torch.linalg.solve(xtr @ xtr.T + ridge * torch.eye(n, dtype=xtr.dtype, device=xtr.device), yc)
        w = xtr.T @ alpha
    else:
        w = torch.linalg.solve(xtr.T @ xtr + ridge * torch.eye(d, dtype=xtr.dtype, device=xtr.device), xtr.T @ yc)
    return xte @ w + y_mean


def probe_accuracy(
    feature,
    labels: Tensor,
    num_classes: int,
    ridge: float = 1e-2,
    folds: int = 2,
    max_dim: int = 2048,
    seed: int = 0,
) -> float:
    """Importance of a layer: held-out accuracy of a ridge-regression linear probe (one-hot least squares, then
    argmax), averaged over `folds` folds. Closed form, so scoring every teacher layer costs no training run."""
    x = _pooled(feature)
    labels = labels.detach().reshape(-1).to(device=x.device, dtype=torch.long)
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but the feature has n={n} examples")
    if folds < 2:
        raise ValueError(f"folds must be >= 2 to hold out data, got {folds}")
    if n < 2 * folds:
        raise DataError(f"need at least {2 * folds} examples for {folds} folds, got n={n}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min().item()}, {labels.max().item()}]")

    gen = torch.Generator().manual_seed(seed)
    if x.shape[1] > max_dim:  # fixed Gaussian projection (Johnson-Lindenstrauss): keeps the solve bounded
        proj = torch.randn(x.shape[1], max_dim, generator=gen, dtype=torch.float64) / math.sqrt(max_dim)
        x = x @ proj.to(x.device)
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)
    order = torch.randperm(n, generator=gen).to(x.device)

    accs = []
    for test_idx in torch.tensor_split(order, folds):
        mask = torch.ones(n, dtype=torch.bool, device=x.device)
        mask[test_idx] = False
        xtr, xte = x[mask], x[test_idx]
        mean, std = xtr.mean(dim=0), xtr.std(dim=0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))  # constant columns: centered to 0, leave unscaled
        pred = _ridge_fit_predict((xtr - mean) / std, onehot[mask], (xte - mean) / std, ridge).argmax(dim=1)
        accs.append((pred == labels[test_idx]).double().mean().item())
    return float(sum(accs) / len(accs))


def logit_cka(feature, teacher_logits: Tensor) -> float:
    """Importance of a layer as its CKA with the teacher's logits: no labels, no solve, a cheap proxy for how
    much of the final decision the layer already carries."""
    return linear_cka(as_matrix(feature), as_matrix(teacher_logits))


def _match_rows(c: Tensor) -> list[tuple[int, int]]:
    """Monotonic matching of every row of c (m <= n) to distinct, increasing columns, maximizing the sum.

    best[i][j] = best total using rows < i and columns < j with all those rows matched:
    best[i][j] = max(best[i][j-1] (skip column j-1), best[i-1][j-1] + c[i-1][j-1] (pair them)).
    """
    m, n = c.shape
    vals = c.tolist()
    neg = -math.inf
    best = [[0.0] * (n + 1)] + [[neg] * (n + 1) for _ in range(m)]
    for i in range(1, m + 1):
        for j in range(i, n + 1):
            best[i][j] = max(best[i][j - 1], best[i - 1][j - 1] + vals[i - 1][j - 1])
    pairs, i, j = [], m, n
    while i > 0:
        take = best[i - 1][j - 1] + vals[i - 1][j - 1]
        # ties go to skipping, i.e. to the earliest teacher columns; 1e-12 absorbs rounding in the sums
        if j > i and best[i][j - 1] >= take - 1e-12:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def match_layers(cka: Tensor) -> list[tuple[int, int]]:
    """Order-preserving student->teacher matching maximizing total CKA: hints must keep the network's depth
    order (early student layers learn from early teacher layers), which per-row argmax does not guarantee.

    Returns min(m, n) pairs sorted by student index: with m <= n every student layer is matched, with m > n every
    teacher layer is matched (the extra student layers get no hint). Ties go to the earliest layers."""
    if cka.dim() != 2:
        raise ValueError(f"cka must be a 2-D (student, teacher) matrix, got shape {tuple(cka.shape)}")
    c = cka.detach().to(torch.float64).cpu()
    if torch.isnan(c).any():
        raise ValueError("cka matrix contains NaN")
    m, n = c.shape
    if m == 0 or n == 0:
        return []
    if m <= n:
        return _match_rows(c)
    return sorted((i, j) for j, i in _match_rows(c.T))


def select_pairs(
    cka: Tensor, importance: Sequence[float] | Tensor | None = None, top_k: int | None = None
) -> list[tuple[int, int, float]]:
    """Matched pairs scored cka[i, j] * importance[j], keeping the top_k: a hint from a teacher layer that is
    similar but knows little about the task is worth less than one from a layer that carries the decision.

    Returns (student_idx, teacher_idx, score) sorted by student index; score ties keep the earlier student."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for all pairs), got {top_k}")
    if importance is None:
        imp = [1.0] * cka.shape[1]
    else:
        imp = [float(v) for v in (importance.tolist() if isinstance(importance, Tensor) else importance)]
        if len(imp) != cka.shape[1]:
            raise ValueError(f"importance has {len(imp)} entries but cka has {cka.shape[1]} teacher layers")
    scored = [(i, j, float(cka[i, j]) * imp[j]) for i, j in match_layers(cka)]
    if top_k is not None:
        scored = sorted(scored, key=lambda p: -p[2])[:top_k]  # stable: equal scores keep student order
    return sorted(scored, key=lambda p: p[0])


@dataclass
class LayerAnalysis:
    """Everything the layer-selection step found, ready to print as tables or write as JSON."""

    student_names: list[str]
    teacher_names: list[str]
    cka: Tensor
    teacher_probe: list[float]
    teacher_logit_cka: list[float]
    matching: list[tuple[str, str, float, float]]  # (student_name, teacher_name, cka, score)
    importance: str = "probe"

    def as_dict(self) -> dict:
        """Plain lists, floats and strings only, so `json.dumps` works."""
        return {
            "student_names": [str(s) for s in self.student_names],
            "teacher_names": [str(t) for t in self.teacher_names],
            "cka": [[float(v) for v in row] for row in self.cka.tolist()],
            "teacher_probe": [float(v) for v in self.teacher_probe],
            "teacher_logit_cka": [float(v) for v in self.teacher_logit_cka],
            "importance": self.importance,
            "matching": [
                {"student": str(s), "teacher": str(t), "cka": float(c), "score": float(sc)}
                for s, t, c, sc in self.matching
            ],
        }


def analyze(
    student: dict,
    teacher: dict,
    labels: Tensor,
    teacher_logits: Tensor,
    num_classes: int,
    top_k: int | None = None,
    importance: str = "probe",
    debiased: bool = True,
) -> LayerAnalysis:
    """CKA table (debiased by default: captured layers usually have d >> n), both teacher importance scores, and
    the top_k monotonic pairs, in one call."""
    if importance not in ("probe", "logit_cka"):
        raise ValueError(f"importance must be 'probe' or 'logit_cka', got {importance!r}")
    s_names, t_names = list(student), list(teacher)
    cka = cka_matrix(student, teacher, debiased=debiased)
    probe = [probe_accuracy(teacher[t], labels, num_classes) for t in t_names]
    lcka = [logit_cka(teacher[t], teacher_logits) for t in t_names]
    pairs = select_pairs(cka, probe if importance == "probe" else lcka, top_k)
    matching = [(s_names[i], t_names[j], float(cka[i, j]), score) for i, j, score in pairs]
    return LayerAnalysis(s_names, t_names, cka, probe, lcka, matching, importance)
