"""Deterministic stratified train/validation split: every class keeps its share in both parts, so a small
validation set still measures every class, and the same seed always gives the same split on any machine."""
from __future__ import annotations

import torch
from torch import Tensor

from leankd.errors import DataError


def stratified_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, val indices), both sorted int64 CPU tensors that together cover `range(len(labels))`.

    Class c with n_c items gives round(n_c * val_fraction) of them to validation (Python's round), at least 1 when
    val_fraction > 0 and n_c > 1, and never all of them: each class keeps >= 1 training item."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}; e.g. 0.1 holds out 10% per class.")
    labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
    n = labels.numel()
    if val_fraction == 0.0 or n == 0:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(labels, stable=True)  # indices grouped by class, ascending within a class
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    val_parts = []
    start = 0
    for n_c in counts.tolist():
        members = order[start:start + n_c]
        start += n_c
        k = round(n_c * val_fraction)
        if n_c > 1:
            k = min(max(k, 1), n_c - 1)
        else:
            k = 0
        val_parts.append(members[torch.randperm(n_c, generator=g)[:k]])
    val = torch.cat(val_parts).sort().values
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).reshape(-1), val
