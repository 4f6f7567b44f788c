"""What one example of a user's dataset may look like, and how its batches become `(inputs, targets)`.

`leankd.distill()` takes any Dataset, DataLoader or IterableDataset, and every path (materialized into a
`TensorTask`, streamed through `LoaderTask`, or a stream through `IterableTask`) reads examples the same way: a
`(input, target)` tuple, or a dict with one of `INPUT_KEYS` and one of `TARGET_KEYS`. The conventions live here, in
one place, so an unsupported example fails the same way, with the same message, whichever path would have read it —
and before any training: the first example of each split is checked when the task is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..errors import DataError

INPUT_KEYS = ("input", "inputs", "x", "image")
TARGET_KEYS = ("target", "label", "labels", "y")


def _pick(item: dict, keys: tuple[str, ...], role: str, what: str):
    found = [k for k in keys if k in item]
    if len(found) != 1:
        raise DataError(
            f"{what}: a dict example needs exactly one {role} key out of {list(keys)}; its keys are "
            f"{sorted(map(str, item))}. Rename the keys in your dataset (or its collate_fn), or return an "
            "(input, target) tuple")
    return item[found[0]]


def as_pair(item: Any, what: str) -> tuple[Any, Any]:
    """(input, target) of an example or of a collated batch: a 2-tuple/list, or a dict with the accepted keys."""
    if isinstance(item, dict):
        return _pick(item, INPUT_KEYS, "input", what), _pick(item, TARGET_KEYS, "target", what)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    size = f" of {len(item)} items" if isinstance(item, (tuple, list)) else ""
    raise DataError(f"{what}: an example must be an (input, target) tuple or a dict with an input key "
                    f"{list(INPUT_KEYS)} and a target key {list(TARGET_KEYS)}; got a {type(item).__name__}{size}")


def check_example(item: Any, what: str) -> tuple[Tensor, Tensor]:
    """One example checked and converted: a tensor (or NumPy array) input and an integer class target."""
    x, y = as_pair(item, what)
    if type(x).__module__.startswith("PIL"):
        raise DataError(f"{what}: examples are PIL images, and leankd trains on tensors: add a transform that returns "
                        "tensors, e.g. torchvision.transforms.ToTensor() (or v2.Compose([v2.PILToTensor(), "
                        "v2.ToDtype(torch.float32, scale=True)]))")
    if type(x).__module__ == "numpy":
        x = torch.as_tensor(x)
    if not isinstance(x, Tensor):
        raise DataError(f"{what}: an example's input is a {type(x).__name__}; leankd trains on tensors: add a "
                        "transform (or collate_fn) that returns a tensor per example")
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{what}: an example's target is a {type(y).__name__}; expected a class index (int or "
                        "0-d integer tensor)") from None
    if y.dim() != 0 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{what}: an example's target is a {y.dtype} tensor of shape {tuple(y.shape)}; expected a "
                        "class index (int or 0-d integer tensor)")
    return x, y


class PairCollate:
    """The user's collate_fn (or PyTorch's default), its batch returned as `(inputs, long targets)`. A class, not a
    closure, so DataLoader workers can pickle it."""

    def __init__(self, collate_fn: Optional[Callable] = None, what: str = "data"):
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        self.what = what

    def __call__(self, items: list) -> tuple[Tensor, Tensor]:
        try:
            batch = self.collate_fn(items)
        except RuntimeError as e:
            if self.collate_fn is not torch.utils.data.default_collate:
                raise  # the user's own collate_fn: its own error
            inputs = [as_pair(item, self.what)[0] for item in items]
            shapes = sorted({tuple(x.shape) for x in inputs if isinstance(x, Tensor)})
            raise DataError(f"{self.what}: examples of different shapes ({', '.join(map(str, shapes[:4]))}) cannot be "
                            "stacked into a batch: add a transform that gives every example one shape (resize, crop, "
                            "pad), or pass a DataLoader whose collate_fn pads them") from e
        x, y = as_pair(batch, self.what)
        if not isinstance(x, Tensor):
            raise DataError(f"{self.what}: a collated batch's inputs are a {type(x).__name__}; expected one tensor")
        return x, torch.as_tensor(y).long()


@dataclass
class Source:
    """One split as the user gave it: a dataset, plus the collate_fn and workers of the DataLoader it came in."""
    dataset: Any
    collate_fn: Optional[Callable] = None
    num_workers: int = 0
    batch_size: Optional[int] = None  # the DataLoader's: a hint only, `distill(batch_size=)` rules

    @property
    def streams(self) -> bool:
        return isinstance(self.dataset, torch.utils.data.IterableDataset)

    def loader(self, batch_size: int, what: str, drop_last: bool = False, sampler=None):
        return torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                           drop_last=drop_last, collate_fn=PairCollate(self.collate_fn, what),
                                           num_workers=self.num_workers)

    def first_example(self, what: str) -> tuple[Tensor, Tensor]:
        if self.streams:
            try:
                item = next(iter(self.dataset))
            except StopIteration:
                raise DataError(f"{what}: the IterableDataset yielded no example") from None
        else:
            if len(self.dataset) == 0:
                raise DataError(f"{what}: the dataset is empty")
            item = self.dataset[0]
        return self.checked(item, what)

    def checked(self, item: Any, what: str) -> tuple[Tensor, Tensor]:
        """One example as training reads it: checked, or through the user's collate_fn (which may take examples that
        are not tensors yet, e.g. texts it tokenizes)."""
        if self.collate_fn is None:
            return check_example(item, what)
        x, y = PairCollate(self.collate_fn, what)([item])
        return x[0], y[0]


def _count(items: list) -> int:
    return len(items)


def count_stream(source: Source, what: str, limit: int, fix: str) -> int:
    """Examples in one pass of a stream with no `__len__` (through its own workers, as training reads it); more than
    `limit` reads as endless, since a pass that never ends cannot be counted."""
    total = 0
    loader = torch.utils.data.DataLoader(source.dataset, batch_size=256, collate_fn=_count,
                                         num_workers=source.num_workers)
    for n in loader:
        total += n
        if total > limit:
            raise DataError(f"{what}: the IterableDataset gave more than {limit:,} examples without ending and has no "
                            f"__len__, so it looks endless: {fix}")
    return total


def length(source: Source) -> Optional[int]:
    """`len(dataset)` when it has one (a map-style dataset always; a stream may), else None."""
    try:
        return len(source.dataset)
    except TypeError:
        return None
