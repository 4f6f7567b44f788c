"""The task contract: everything modality-specific lives behind it, so the training loop, the measurements and
the report never branch on images vs audio vs text.

A task yields `Batch`es already on the training device (augmented for training), runs a model on a batch's
inputs, and turns logits into metrics. `TensorTask` covers every dataset that fits in memory as tensors: the
whole epoch (shuffle, gather, augment) happens on the device with no DataLoader, which is where most of the
speed of airbench-style training comes from.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import DataError, LeanKDError
from ..measure.quality import classification_metrics


@dataclass
class Batch:
    inputs: Any  # a tensor, or a dict of tensors for tasks whose models take several inputs
    targets: Tensor
    index: Optional[Tensor] = None  # positions in the split (lets a cache find the teacher's outputs)
    count: Optional[int] = None  # examples in the batch when targets are not one per example (seq2seq: tokens)

    @property
    def size(self) -> int:
        return self.count if self.count is not None else int(self.targets.shape[0])


class Task:
    """Base class: subclasses fill the data and may override `forward` / `metrics`."""

    kind: str = "classification"
    regression: bool = False  # one float output per example (text_regression) instead of class logits
    eval_split: str = "test"  # the split the final report is measured on
    notes: list[str] = []
    num_classes: int
    class_names: list[str]
    device: torch.device

    # data ----------------------------------------------------------------------------------------------
    supports_views: bool = False  # whether train_batches can replay a fixed augmentation view (teacher cache)
    max_views: Optional[int] = None  # distinct views there are (1: the task does not augment, e.g. text)
    VIEW_CHUNK: Optional[int] = None  # views augmented in chunks of this many samples (part of a cache's identity)

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Shuffled, augmented training batches of one epoch. `view=v` replays augmentation view v instead of a
        fresh draw: the same augmented input for every sample whenever v comes back, whatever the batch order —
        what a cached teacher's logits were computed on."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """Every training sample once, under augmentation view `view`, each batch with its `index`: what the teacher
        cache labels (tasks with `supports_views`)."""
        raise NotImplementedError

    def cache_size(self) -> int:
        """Rows a teacher cache of the training split holds: one per example by default (seq2seq: one per target
        token, since word-level KD needs the teacher's distribution at every position)."""
        return self.split_size("train")

    def cache_rows(self, index: Tensor) -> Tensor:
        """The cache rows of training examples `index`, in the order `forward` returns their logits."""
        return index

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches only (fixed shapes, no tiny noisy last step); one step when the split is smaller."""
        n = self.split_size("train")
        return max(1, n // batch_size) if n >= batch_size else 1

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        return self.split_size(split) > 0

    def example_inputs(self, batch_size: int) -> Any:
        """A batch of evaluation inputs for profiling (FLOPs, latency), repeated if the split is small."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "classes": list(self.class_names),
            "train_size": self.split_size("train"),
            "val_size": self.split_size("val"),
            "eval_split": self.eval_split,
            "eval_size": self.split_size(self.eval_split),
            "primary_metric": self.primary_metric(),
            **getattr(self, "info", {}),
        }

    def primary_metric(self) -> dict:
        """The quality figure this task is judged by (`{name, higher_is_better, label}`, `name` a key of the report's
        quality block): the KD verdict and the primary ratios read it from the report, so the report never has to
        know which modality it describes. Default: accuracy (Pearson r for regression)."""
        if self.regression:
            return {"name": "pearson", "higher_is_better": True, "label": "Pearson r"}
        return {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}

    # model -------------------------------------------------------------------------------------------------
    def model_defaults(self) -> dict:
        """Keyword arguments the data implies for models that accept them (e.g. `n_mels`); the recipe's own
        `kwargs` win."""
        return {}

    def quality(self, model, split: str, cpu: bool = False) -> dict:
        """The report's quality block for `model` on `split`; `cpu`: run on the CPU in fp32 (deployment artifacts).
        Default: the metrics of the logits; a task whose outputs must be decoded first (seq2seq) overrides it."""
        from ..train.loop import evaluate

        return evaluate(model, CpuView(self) if cpu else self, split)

    def joint_measurements(self, models: dict) -> dict[str, dict]:
        """Task-specific measurements timed across every model and artifact at once (role -> block to merge into
        its entry), e.g. seq2seq decoding latency, interleaved; default none."""
        return {}

    def extra_measurements(self, model: nn.Module) -> dict:
        """Task-specific measurements that join a model's report block (e.g. streaming latency)."""
        return {}

    def with_train_subset(self, n: int, seed: int) -> "Task":
        """A copy whose training split is a stratified subset of `n` examples (`teacher.limit_train`)."""
        raise LeanKDError(f"teacher.limit_train needs the training data in memory; {type(self).__name__} streams it: "
                          "drop teacher.limit_train or use data.limit_train (which limits every stage)")

    def prepare_model(self, model: nn.Module) -> None:
        """Get the data ready for `model` before it trains or is measured (text: tokenize the way it reads)."""

    def model_inputs(self, model: nn.Module, inputs: Any) -> Any:
        """What `model` takes from a batch's inputs (text: one of several tokenizations); default: all of it."""
        return inputs

    def same_inputs(self, a: nn.Module, b: nn.Module) -> bool:
        """Whether two models read the same input positions (what layer and attention losses compare)."""
        return True

    def save(self, run_dir) -> None:
        """Write what a deployed model needs besides its weights into the run directory (text: a word vocabulary)."""

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        return model(inputs)

    def dynamic_dims(self) -> dict[int, str]:
        """Input dimensions that vary between batches (ONNX export declares them dynamic)."""
        return {0: "batch"}

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        return classification_metrics(logits, targets, self.class_names)


class CpuView:
    """A view of a task whose evaluation batches are moved to the CPU in fp32 (deployment artifacts run there)."""

    def __init__(self, task: Task):
        self.task = task

    def eval_batches(self, split: str, batch_size: int):
        from ..measure.devices import to_device

        for batch in self.task.eval_batches(split, batch_size):
            batch.inputs = to_device(batch.inputs, "cpu", torch.float32)
            batch.targets = batch.targets.cpu()
            yield batch

    def forward(self, model, inputs):
        return self.task.forward(model, inputs)

    def metrics(self, logits, targets):
        return self.task.metrics(logits, targets)


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
                 info: Optional[dict] = None):
        self.datasets = datasets
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
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
        )

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
        raw = torch.stack([ds[i % len(ds)][0] for i in range(batch_size)]).to(self.device)
        return self.transform(raw, None, False)
