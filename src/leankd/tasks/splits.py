"""Which examples train, validate and report: the same rules for every task that reads labelled files (images,
text), so a limit or a held-out fraction means the same thing everywhere."""
from __future__ import annotations

import torch

from ..data.split import stratified_split
from ..errors import DataError
from ..recipe import DataConfig


def split_train(labels: torch.Tensor, cfg: DataConfig, seed: int, notes: list[str], unit: str = "images"):
    """Indices of (train, val) after the optional stratified limit: the same rule for both data paths."""
    keep = torch.arange(len(labels))
    if cfg.limit_train is not None and cfg.limit_train < len(labels):
        keep, _ = stratified_split(labels, 1.0 - cfg.limit_train / len(labels), seed)
        notes.append(f"train split limited to {len(keep)} {unit} (data.limit_train)")
    train_idx, val_idx = stratified_split(labels[keep], cfg.val_fraction, seed)
    return keep[train_idx], keep[val_idx]


def limit_test(labels: torch.Tensor, cfg: DataConfig, seed: int, notes: list[str], unit: str = "images") -> torch.Tensor:
    if cfg.limit_test is None or cfg.limit_test >= len(labels):
        return torch.arange(len(labels))
    _, keep = stratified_split(labels, cfg.limit_test / len(labels), seed)
    notes.append(f"test split limited to a stratified {len(keep)} of {len(labels)} {unit} (data.limit_test): "
                 "figures are noisier than on the full test set")
    return keep


def choose_eval_split(cfg: DataConfig, has_val: bool, has_test: bool, notes: list[str]) -> str:
    if cfg.eval_split == "test" and not has_test:
        if not has_val:
            raise DataError(
                f"data.source {cfg.source!r} has no test split and data.val_fraction is 0, so nothing is left to "
                "evaluate on: set data.val_fraction > 0 or provide a test split"
            )
        notes.append("the source has no test split: the report is measured on the held-out validation split")
        return "val"
    if cfg.eval_split == "val" and not has_val:
        raise DataError("data.eval_split is 'val' but data.val_fraction is 0: set data.val_fraction > 0")
    return cfg.eval_split


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a stratified subset of `n` examples (all of them when n >= len(labels))."""
    if n >= len(labels):
        return torch.arange(len(labels))
    keep, _ = stratified_split(labels.cpu(), 1.0 - n / len(labels), seed)
    return torch.sort(keep).values


def example_split_statement(sizes: dict[str, int], test_from_source: bool, unit: str = "examples") -> dict:
    """How a labelled-file task split its data, for the report (`report.schema.SplitMethod`): held-out examples drawn
    per class (no grouping: near-duplicates of one source can sit on both sides), the test split the source's own."""
    detail = (f"validation held out of the training {unit} per class (seeded); "
              + ("the test split is the source's own" if test_from_source else "the source has no test split"))
    return {"method": "by example (stratified)", "unit": unit, "examples": {k: v for k, v in sizes.items()},
            "detail": detail}
