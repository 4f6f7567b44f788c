"""The task `leankd.distill()` builds from whatever data the user hands it.

- `(inputs, targets)` tensors or a `TensorDataset`: a `TensorTask`, exactly as always (same results, same teacher
  cache key).
- a map-style `Dataset` (or a `DataLoader` over one) whose splits are small — at most `MATERIALIZE_MAX_BYTES` of
  inputs in all, judged from the first example — is read once into tensors: a `TensorTask`, the fast on-device path,
  where the teacher cache works. Larger ones stream through `LoaderTask` (seeded order: reproducible, resumable).
  A dataset whose `__getitem__` augments at random (two reads of example 0 differ) is streamed too, so each epoch
  draws new augmentations; materializing it would freeze one draw.
- an `IterableDataset` (or a `DataLoader` over one): an `IterableTask` (`tasks/stream.py`); with `materialize=True`
  a finite stream is read into tensors instead (a `TensorTask`, the teacher cache works).
A `DataLoader` lends its dataset, `collate_fn` and `num_workers`; its sampler/shuffle are not used (leankd's seeded
order is what makes runs reproducible) and its `batch_size` is only the default of `distill(batch_size=)`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..core.task import Task
from ..errors import DataError
from .base import LoaderTask, TensorTask
from .items import PairCollate, Source
from . import stream
from .stream import IterableTask

# 256 MiB of inputs over all splits: the on-device path holds the splits, plus one augmented copy of the training
# split while a teacher cache replays a view, and hashes the training tensors for the cache key — all cheap at this
# size on any GPU and on a laptop's RAM (CIFAR-10's 60,000 images are 177 MiB as uint8, 703 MiB as float32: the
# float32 version streams). `distill(materialize=True/False)` overrides the choice.
MATERIALIZE_MAX_BYTES = 256 * 2**20


def _source(data: Any, what: str) -> Source:
    if isinstance(data, torch.utils.data.DataLoader):
        # batch_size=None turns batching off and its collate_fn is then a per-example converter: leankd batches
        collate = data.collate_fn if data.batch_size is not None else None
        return Source(data.dataset, collate, data.num_workers, data.batch_size)
    if isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                                      and not isinstance(data, (tuple, list, str, dict, Tensor))):
        return Source(data)
    raise DataError(f"{what}: expected (inputs, targets) tensors, a TensorDataset, a map-style Dataset, an "
                    f"IterableDataset or a DataLoader; got a {type(data).__name__}")


def _tensors(data: Any) -> Optional[tuple[Tensor, Tensor]]:
    """(inputs, targets) when the data are given as tensors, else None."""
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        data = data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    return None


def _nbytes(source: Source, first: Tensor) -> int:
    return first.element_size() * first.numel() * len(source.dataset)


def _augments(source: Source) -> bool:
    """Whether example 0 differs between two reads: a random transform in `__getitem__`."""
    a, b = source.dataset[0], source.dataset[0]
    return not torch.equal(source.checked(a, "train_data")[0], source.checked(b, "train_data")[0])


def _materialize(source: Source, what: str) -> tuple[Tensor, Tensor]:
    xs, ys, rows = [], [], 0
    for x, y in source.loader(256, what):
        xs.append(x)
        ys.append(y)
        rows += len(y)
        if source.streams and rows > stream.STREAM_COUNT_LIMIT:
            raise DataError(f"{what}: materialize=True, but the stream gave more than {stream.STREAM_COUNT_LIMIT:,} "
                            "examples without ending: leave materialize unset to stream it")
    return torch.cat(xs), torch.cat(ys)


def build_task(data: dict[str, Any], num_classes: Optional[int], device: torch.device,
               steps_per_epoch: Optional[int] = None, materialize: Optional[bool] = None,
               batch_size: int = 128) -> Task:
    """The task of `distill()`'s splits (`{"train": ..., "val": ..., "test": ...}`, None splits left out)."""
    tensors = {name: _tensors(d) for name, d in data.items()}
    if all(t is not None for t in tensors.values()):  # the path of old: unchanged
        if steps_per_epoch is not None:
            raise DataError("steps_per_epoch applies to a stream (IterableDataset) only: in-memory data train one pass "
                            "per epoch")
        return TensorTask(tensors, num_classes=num_classes if num_classes is not None else _infer(tensors),
                          device=device)
    sources = {name: Source(torch.utils.data.TensorDataset(*t)) if t is not None else _source(data[name],
                                                                                              f"{name}_data")
               for name, t in tensors.items()}
    firsts = {name: s.first_example(f"{name}_data") for name, s in sources.items()}  # bad examples fail here
    if sources["train"].streams and materialize:  # a finite stream the user knows fits in memory
        if steps_per_epoch is not None:
            raise DataError("steps_per_epoch and materialize=True: a stream read into memory trains one pass per "
                            "epoch; drop one of them")
        return _tensor_task({name: tensors[name] or _materialize(s, f"{name}_data") for name, s in sources.items()},
                            num_classes, device, [])
    if sources["train"].streams:
        if num_classes is None:
            raise DataError("num_classes: a stream (IterableDataset) cannot be scanned for its labels: pass "
                            "num_classes=")
        return IterableTask(sources, num_classes, device, steps_per_epoch, batch_size)
    if steps_per_epoch is not None:
        raise DataError("steps_per_epoch applies to a stream (IterableDataset) only: a map-style train_data trains "
                        "one pass per epoch")
    streamed = [name for name, s in sources.items() if s.streams]
    if streamed:
        raise DataError(f"{streamed[0]}_data is an IterableDataset but train_data is map-style: pass the "
                        f"{streamed[0]} data as a map-style Dataset or tensors (a finite stream fits in a list: wrap "
                        "list(stream) in a Dataset), or train_data as a stream too")
    notes = []
    if materialize is None:
        size = sum(_nbytes(s, firsts[name][0]) for name, s in sources.items())
        materialize = size <= MATERIALIZE_MAX_BYTES
        if materialize and _augments(sources["train"]):
            materialize = False
            notes.append("train_data augments at random in __getitem__ (two reads of example 0 differ): it is "
                         "streamed so each epoch draws new augmentations (materialize=True would freeze one draw)")
    if materialize:
        return _tensor_task({name: tensors[name] or _materialize(s, f"{name}_data") for name, s in sources.items()},
                            num_classes, device, notes)
    if num_classes is None:
        raise DataError("num_classes: a streamed dataset (inputs over "
                        f"{MATERIALIZE_MAX_BYTES // 2**20} MiB, random augmentation in __getitem__, or "
                        "materialize=False) is not scanned for its labels: pass num_classes= (or materialize=True if "
                        "its inputs fit in memory)")
    task = LoaderTask({name: s.dataset for name, s in sources.items()}, num_classes,
                      [str(i) for i in range(num_classes)], lambda x, g, train: x, device=device,
                      num_workers=sources["train"].num_workers, info={"streamed": True},
                      collate_fn={name: PairCollate(s.collate_fn, f"{name}_data") for name, s in sources.items()})
    task.notes = notes + (["no validation or test data was given: quality is measured on the TRAINING data"]
                          if task.eval_split == "train" else [])
    return task


def _infer(splits: dict[str, tuple[Tensor, Tensor]]) -> int:
    return int(max(int(y.max()) for _, y in splits.values())) + 1


def _tensor_task(splits: dict[str, tuple[Tensor, Tensor]], num_classes: Optional[int], device: torch.device,
                 notes: list[str]) -> TensorTask:
    task = TensorTask(splits, num_classes=num_classes if num_classes is not None else _infer(splits), device=device)
    task.notes += notes
    return task


def batch_size_hint(data: Any) -> Optional[int]:
    """A DataLoader's batch_size: the default of `distill(batch_size=)` when it is not given."""
    return data.batch_size if isinstance(data, torch.utils.data.DataLoader) else None
