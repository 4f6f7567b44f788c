"""The in-memory and streamed tasks every modality builds on. The contract itself (`Batch`, `Task`, `CpuView`)
is `leankd.core.task`, re-exported here for the code and users that import it from this module.

`TensorTask` covers every dataset that fits in memory as tensors: the whole epoch (shuffle, gather, augment)
happens on the device with no DataLoader, which is where most of the speed of airbench-style training comes from.
`LoaderTask` streams from disk through a DataLoader and augments on the device the same way.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from ..core.task import Batch, CpuView, Task
from ..errors import DataError

__all__ = ["Batch", "CpuView", "Task", "TensorTask", "LoaderTask", "take_inputs", "concat_inputs"]


def take_inputs(inputs: Any, idx: Tensor) -> Any:
    """Rows `idx` of a batch's inputs (a tensor, or a dict of tensors)."""
    return {k: take_inputs(v, idx) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]


def concat_inputs(chunks: list) -> Any:
    """Batches' inputs joined along the batch dimension (tensors, or dicts of tensors)."""
    if isinstance(chunks[0], dict):
        return {k: concat_inputs([c[k] for c in chunks]) for k in chunks[0]}
    return torch.cat(chunks)


def _seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class TensorTask(Task):
    """A classification task whose splits are in-memory tensors living on the training device.

    `transform(x, generator, train)` turns raw stored inputs (e.g. uint8 images) into model inputs; for
    training it may augment using the generator, which is seeded from (seed, epoch) so an epoch is reproducible
    on its own — that is what makes `--resume` land on the same result as an uninterrupted run.
    """

    def __init__(
        self,
        splits: dict[str, tuple[Tensor, Tensor]],
        num_classes: int,
        class_names: Optional[list[str]] = None,
        transform: Optional[Callable[[Tensor, Optional[torch.Generator], bool], Any]] = None,
        device: str | torch.device = "cpu",
        info: Optional[dict] = None,
    ):
        if "train" not in splits:
            raise DataError("a TensorTask needs a 'train' split")
        self.device = torch.device(device)
        self.splits = {}
        for name, (x, y) in splits.items():
            if len(x) != len(y):
                raise DataError(f"split '{name}': {len(x)} inputs but {len(y)} targets")
            self.splits[name] = (x.to(self.device), y.to(self.device, dtype=torch.long))
        self.num_classes = int(num_classes)
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]
        self.transform = transform or (lambda x, g, train: x)
        self.info = info or {}
        self.notes: list[str] = []  # honest caveats about the data that the report should repeat
        self.eval_split = next(s for s in ("test", "val", "train") if s in self.splits)
        if self.eval_split == "train":
            self.notes.append("no validation or test data was given: quality is measured on the TRAINING data")
        y = self.splits["train"][1]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(f"train labels span [{int(y.min())}, {int(y.max())}] but num_classes is {self.num_classes}")

    def split_size(self, split: str) -> int:
        return len(self.splits[split][1]) if split in self.splits else 0

    def train_tensors(self) -> list[Tensor]:
        return list(self.splits["train"])  # (inputs, targets) as stored: what keys `leankd.distill`'s teacher cache

    supports_views = True
    # a view is augmented in fixed chunks of the stored order, so it never depends on the batch size. Small chunks
    # keep the intermediates in the CPU cache: on 2 cores a Speech Commands view costs what per-batch augmentation
    # costs at 64 (1.4-1.6 s vs 1.5 s per epoch), 1.5x that at 256 and 3x at 1024
    VIEW_CHUNK = 64

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        x, y = self.splits["train"]
        g = _seeded_generator(self.device, seed * 1_000_003 + epoch)
        order = torch.randperm(len(y), device=self.device, generator=g)
        steps = self.steps_per_epoch(batch_size)
        viewed = self.view_inputs(view, seed) if view is not None else None
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            inputs = take_inputs(viewed, idx) if viewed is not None else self.transform(x[idx], g, True)
            yield Batch(inputs, y[idx], idx)

    def view_inputs(self, view: int, seed: int) -> Any:
        """The whole training split under augmentation view `view`: augmented chunk by chunk in stored order with a
        generator seeded by (seed, view), so sample i gets the same augmentation every time the view is replayed.
        The last view is kept (one augmented copy of the split in memory), so consecutive epochs of one view
        augment once."""
        key = (int(view), int(seed))
        if getattr(self, "_view_key", None) != key:
            self._view_key, self._view = None, None  # free the previous view before building the next
            x, _ = self.splits["train"]
            g = _seeded_generator(self.device, 7_919 * (seed * 1_000_003 + view) + 104_729)
            chunks = [self.transform(x[i:i + self.VIEW_CHUNK], g, True) for i in range(0, len(x), self.VIEW_CHUNK)]
            self._view_key, self._view = key, concat_inputs(chunks)
        return self._view

    def with_train_subset(self, n: int, seed: int) -> "TensorTask":
        from .splits import stratified_subset

        x, y = self.splits["train"]
        keep = stratified_subset(y, n, seed).to(self.device)
        task = copy.copy(self)
        task.splits = {**self.splits, "train": (x[keep], y[keep])}
        task._view_key, task._view = None, None
        return task

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        inputs, y = self.view_inputs(view, seed), self.splits["train"][1]
        for i in range(0, len(y), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(y)), device=self.device)
            yield Batch(take_inputs(inputs, idx), y[idx], idx)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        x, y = self.splits[split]
        for i in range(0, len(y), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(y)), device=self.device)
            yield Batch(self.transform(x[i:i + batch_size], None, False), y[i:i + batch_size], idx)

    def example_inputs(self, batch_size: int) -> Any:
        split = "test" if self.has_split("test") else ("val" if self.has_split("val") else "train")
        x, _ = self.splits[split]
        reps = -(-batch_size // len(x))
        raw = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size] if reps > 1 else x[:batch_size]
        return self.transform(raw, None, False)



class LoaderTask(Task):
    """A classification task streamed from disk through a DataLoader, for datasets too large for memory.

    Workers only decode; batches (e.g. uint8 images) go to the device and through the same `transform` as in
    `TensorTask`, so augmentation stays on the device and identical between the two paths. The epoch order comes
    from a generator seeded by (seed, epoch), so runs are reproducible and resumable here too."""

    def __init__(self, datasets: dict[str, torch.utils.data.Dataset], num_classes: int, class_names: list[str],
                 transform: Callable, device: str | torch.device = "cpu", num_workers: int = 2,
                 info: Optional[dict] = None, collate_fn: Optional[Callable | dict[str, Callable]] = None):
        self.datasets = datasets
        self.collate_fn = collate_fn  # returns (inputs, targets); one per split in a dict; None: PyTorch's default
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.transform = transform
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.info = info or {}
        self.notes = []
        self.eval_split = next(s for s in ("test", "val", "train") if s in datasets)

    def split_size(self, split: str) -> int:
        return len(self.datasets[split]) if split in self.datasets else 0

    def _loader(self, split: str, batch_size: int, order: Optional[list[int]] = None, drop_last: bool = False):
        return torch.utils.data.DataLoader(
            self.datasets[split], batch_size=batch_size, sampler=order, shuffle=False, drop_last=drop_last,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda", collate_fn=self._collate(split),
        )

    def _collate(self, split: str) -> Callable:
        collate = self.collate_fn.get(split) if isinstance(self.collate_fn, dict) else self.collate_fn
        return collate or torch.utils.data.default_collate

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        if view is not None:
            raise DataError("augmentation views (the teacher cache) need the data in memory: set data.in_memory: "
                            "true, or turn teacher.cache off")
        # same generator, same draws as TensorTask: the two paths give identical epochs on the same device
        g = _seeded_generator(self.device, seed * 1_000_003 + epoch)
        order = torch.randperm(self.split_size("train"), device=self.device, generator=g)
        drop_last = self.split_size("train") >= batch_size
        for i, (x, y) in enumerate(self._loader("train", batch_size, order.tolist(), drop_last)):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            idx = order[i * batch_size:i * batch_size + len(y)]
            yield Batch(self.transform(x, g, True), y, idx)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        start = 0
        for x, y in self._loader(split, batch_size):
            idx = torch.arange(start, start + len(y), device=self.device)
            start += len(y)
            yield Batch(self.transform(x.to(self.device), None, False), y.to(self.device), idx)

    def example_inputs(self, batch_size: int) -> Any:
        ds = self.datasets[self.eval_split]
        raw = self._collate(self.eval_split)([ds[i % len(ds)] for i in range(batch_size)])[0].to(self.device)
        return self.transform(raw, None, False)
