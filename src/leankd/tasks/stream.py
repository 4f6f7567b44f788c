"""`IterableTask`: a classification task whose training data is a stream (an `IterableDataset`: no length, no index).

Why a task of its own: `TensorTask` and `LoaderTask` draw a seeded permutation of sample indices each epoch; a stream
has no index to permute, so this task batches the stream in its own order (shuffle inside the stream, e.g. a
WebDataset shuffle buffer). What that costs:
- an epoch is one pass of the stream, or `steps_per_epoch` batches when given (required for an endless stream; a
  finite one with no `__len__` is counted once up front, since the LR schedule needs the steps per epoch). With
  `steps_per_epoch` the stream continues from epoch to epoch and starts over when it ends; a new run (or a stage
  starting at epoch 0) starts it over, so the baseline and the KD student see the same batches;
- no teacher cache: it finds a sample's logits by its stable index, which a stream does not have
  (`leankd.distill(teacher_cache_views=...)` falls back to the live teacher with a note);
- `--resume` starts the stream over at the resumed epoch: in one-pass mode that is the epoch an uninterrupted run
  would have seen (for a deterministic stream); with `steps_per_epoch` it is not (the uninterrupted run would have
  continued the stream);
- under torchrun every rank reads the whole stream and the loop cuts each global batch (`Task.shard_batch`), so the
  stream must yield the same examples in the same order on every rank (do not shard it by rank yourself);
- DataLoader workers (a DataLoader's `num_workers`) each run the stream: split it between them with
  `torch.utils.data.get_worker_info()`, or each worker yields all of it (PyTorch's rule for iterable datasets).
Evaluation splits may be streams (finite) or map-style datasets; they are read in order.

A stream with a `set_epoch(n)` method (a Hugging Face `datasets.IterableDataset`, leankd's `ShardStream`) is told
which pass begins, `n` drawn from (seed, epoch) as `TensorTask`'s order is, so its shuffle buffer reshuffles each
epoch and a stage's epoch is reproducible. `transform(x, generator, train)` (a recipe's on-device augmentation and
normalization, as in `TensorTask`) runs on each batch on the device, the generator seeded from (seed, epoch).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch

from ..core import dist
from ..core.task import Batch, Task
from ..errors import DataError
from .items import Source, count_stream, length

# a stream with no __len__ that has not ended after this many examples is taken for endless (the counting pass)
STREAM_COUNT_LIMIT = 10_000_000


class IterableTask(Task):
    """Classification over a stream of `(input, target)` examples (or dicts, see `tasks.items`)."""

    supports_views = False
    streams = True  # no stable sample index: `leankd.distill` uses a live teacher instead of a cache

    def __init__(self, splits: dict[str, Source], num_classes: int, device: str | torch.device = "cpu",
                 steps_per_epoch: Optional[int] = None, batch_size: Optional[int] = None,
                 transform: Optional[Callable] = None, class_names: Optional[list[str]] = None,
                 info: Optional[dict] = None):
        self.sources = splits
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        self.device = torch.device(device)
        self.transform = transform or (lambda x, g, train: x)
        self.fixed_steps = steps_per_epoch
        self._sizes: dict[str, Optional[int]] = {}
        for name, source in splits.items():
            n = length(source)
            if n is None and not (name == "train" and steps_per_epoch is not None):
                fix = ("pass steps_per_epoch=N (batches per epoch), or give the dataset a __len__" if name == "train"
                       else f"{name} data must end: pass a finite stream or a map-style Dataset")
                n = count_stream(source, f"{name}_data", STREAM_COUNT_LIMIT, fix)
            self._sizes[name] = n
        if steps_per_epoch is not None and self._sizes["train"] is None:
            self._sizes["train"] = steps_per_epoch * batch_size if batch_size else None
        self.eval_split = next(s for s in ("test", "val", "train") if s in splits)
        self.info = {**(info or {}), "stream": True, "steps_per_epoch": steps_per_epoch}
        self.notes = ["the training data is a stream (IterableDataset): batches come in the stream's own order "
                      "(no shuffling by leankd)"]
        if self.eval_split == "train":
            self.notes.append("no validation or test data was given: quality is measured on the TRAINING data")
        self._stream, self._next_epoch = None, None
        self.share_shape: Optional[tuple] = None  # set for a stream with `set_share` (see `_batches`)

    def split_size(self, split: str) -> int:
        return (self._sizes.get(split) or 0) if split in self.sources else 0

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.fixed_steps if self.fixed_steps is not None else super().steps_per_epoch(batch_size)

    def _batches(self, batch_size: int, pass_id: int) -> Iterator:
        """One pass of the training stream in full batches (one smaller batch when the pass is shorter than one)."""
        dataset = self.sources["train"].dataset
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(pass_id)
        n = self._sizes["train"]
        drop_last = n is None or n >= batch_size
        if self.share_shape is not None:  # leankd's own streams: decode only this rank's rows (data.shards.RankShare)
            from ..data.shards import RankShare

            world = dist.world_size() if drop_last else 1  # a pass shorter than one batch: every row
            dataset.set_share(RankShare(batch_size, dist.rank(), world, self.share_shape))
        return iter(self.sources["train"].loader(batch_size, "train_data", drop_last=drop_last))

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        if view is not None:
            raise DataError("augmentation views (the teacher cache) need a stable sample index, which a stream "
                            "(IterableDataset) has not: use a live teacher, or a map-style Dataset")
        steps = self.steps_per_epoch(batch_size)
        pass_id = seed * 1_000_003 + epoch  # TensorTask's order and augmentation are drawn from the same number
        if self.fixed_steps is None or self._stream is None or epoch != self._next_epoch:
            self._stream = self._batches(batch_size, pass_id)  # a new pass (a new stage, or a resumed one)
        self._next_epoch = epoch + 1
        g = torch.Generator(device=self.device)
        g.manual_seed(pass_id)
        taken, restarted = 0, False
        while taken < steps:
            try:
                x, y = next(self._stream)
            except StopIteration:
                if self.fixed_steps is None:
                    return  # one pass per epoch: the pass ended
                if restarted:
                    raise DataError(f"train_data: the stream gave no full batch of {batch_size} examples: give more "
                                    "examples or a smaller batch_size") from None
                self._stream, restarted = self._batches(batch_size, pass_id + 7_919), True
                continue
            restarted = False
            taken += 1
            x = self.transform(x.to(self.device, non_blocking=True), g, True)
            yield Batch(x, y.to(self.device, non_blocking=True), None)
        if self.fixed_steps is None:
            self._stream = None

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        start = 0
        for x, y in self.sources[split].loader(batch_size, f"{split}_data"):
            idx = torch.arange(start, start + len(y), device=self.device)
            start += len(y)
            yield Batch(self.transform(x.to(self.device), None, False), y.to(self.device), idx)

    def example_inputs(self, batch_size: int) -> Any:
        chunks, rows = [], 0
        for batch in self.eval_batches(self.eval_split, batch_size):
            chunks.append(batch.inputs)
            rows += len(batch.inputs)
            if rows >= batch_size:
                break
        x = torch.cat(chunks)
        reps = -(-batch_size // len(x))
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size] if reps > 1 else x[:batch_size]
