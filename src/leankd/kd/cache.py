"""Teacher-output cache (offline KD): the teacher runs once per (data, teacher weights, augmentation view), its
logits are stored in fp16 in a memory-mapped file, and every later epoch, student and run reads them back.

Views: K fixed augmentation views of the training split (`Task.view_inputs`); each epoch draws one, the student
trains on exactly the inputs the teacher saw for that view (FKD's idea of storing the view with the soft labels),
so it still sees augmentation ("a good teacher is patient and consistent": one fixed view would overfit).

Files, in one directory: `<fingerprint>.logits.npy` ([K, N, C] float16, a plain .npy so numpy memory-maps it;
with `top_k`, [K, N] records of `kd.topk.record_dtype`: 4k + 4 bytes per row, the layout of `TOP_K_FORMAT`) and
`<fingerprint>.json` (what it was made from, K, build time). The fingerprint covers the data and its augmentation
settings, the seed, the teacher's weights and precision, and K: a cache made for anything else is another file,
and a run directory keeps only the cache of its current fingerprint (an old one is reported and deleted, never
read). Both files are written under temporary names and renamed, the JSON last: a cache without its JSON is
incomplete and rebuilt.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..core import dist
from ..core.task import Batch, Task
from ..errors import RecipeError
from ..io import atomic_path, write_json_atomic
from .topk import TopKLogits, compress_top_k, expand_top_k, pack_top_k, record_dtype, unpack_top_k

__all__ = ["CacheInfo", "CachedTeacher", "build_or_load", "compress_top_k", "expand_top_k", "view_of_epoch"]

CACHE_FORMAT = 1  # dense caches: [K, N, C] float16 (unchanged, so existing run directories keep theirs)
# top-k caches: packed records (kd.topk). Format 1 top-k caches held fp32 rows of 8k + 4 bytes; one found is rebuilt
# in this layout under the same file fingerprint (the students' stage fingerprints never included the layout)
TOP_K_FORMAT = 2


@dataclass
class CacheInfo:
    """What the report says about the cache."""

    path: str
    views: int
    samples: int
    classes: int
    top_k: Optional[int]  # None: every logit stored (fp16); k: top-k logits + indices + a tail logit (kd.topk)
    disk_mb: float
    build_s: Optional[float]  # None when an existing cache was reused
    reused: bool
    bytes_per_row: Optional[int] = None  # one sample's (a causal LM: one token's) stored outputs in one view

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def view_of_epoch(epoch: int, views: int, seed: int) -> int:
    """The view epoch `epoch` trains on: a seeded draw, so a resumed run replays the same views."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 31_337)
    return int(torch.randint(views, (1,), generator=g))


class CachedTeacher:
    """Stands in for a live teacher: `teacher(batch)` returns the stored logits of the batch's samples in the
    current view. `view_for_epoch` tells the loop which view to ask the task for; the student loop cannot tell
    this from a live teacher otherwise. Needs `batch.index` (positions in the training split)."""

    # the current view's rows are copied to the device whole when they are at most this large (CIFAR-10: 1 MB per
    # view), so a step gathers its rows on the device: no host round trip, nothing that breaks a CUDA graph's pace
    RESIDENT_BYTES = 256 * 2**20

    def __init__(self, logits_path: Path, views: int, seed: int, device: torch.device, num_classes: int,
                 top_k: Optional[int] = None, rows_of: Callable[[Tensor], Tensor] = lambda index: index):
        self.logits = np.load(logits_path, mmap_mode="r")
        self.rows_of = rows_of  # a batch's sample indices -> its cache rows (Task.cache_rows)
        self.views, self.seed, self.device = views, seed, device
        self.num_classes, self.top_k = num_classes, top_k
        # what the current view takes on the device: fp32 logits, or the fp32 rows of `compress_top_k`
        self.resident_nbytes = self.logits.shape[1] * 4 * (num_classes if top_k is None else 2 * top_k + 1)
        self.view = 0
        self._resident: Optional[tuple[int, Tensor]] = None  # (view, its rows on the device)

    @property
    def speedups(self) -> list[str]:
        return [f"teacher logits from the cache ({self.views} view{'s' if self.views != 1 else ''})"]

    def view_for_epoch(self, epoch: int) -> int:
        self.view = view_of_epoch(epoch, self.views, self.seed)
        return self.view

    def _view_rows(self) -> Optional[Tensor]:
        """The current view's stored rows on the device (float32), or None when a view is too large to hold."""
        if self._resident is not None and self._resident[0] == self.view:
            return self._resident[1]
        self._resident = None  # drop the previous view first
        if self.resident_nbytes > self.RESIDENT_BYTES:
            return None
        rows = self._decode(self.logits[self.view]).to(self.device)
        self._resident = (self.view, rows)
        return rows

    def _decode(self, stored: np.ndarray) -> Tensor:
        """Stored rows -> fp32: the logits, or (top-k) the rows `expand_top_k` reads."""
        if self.top_k is None:
            return torch.from_numpy(np.asarray(stored, dtype=np.float32))
        return unpack_top_k(stored, self.top_k)

    def __call__(self, batch: Batch) -> Tensor:
        if batch.index is None:
            raise ValueError("a cached teacher needs batches that carry their sample indices")
        resident = self._view_rows()
        where = self.rows_of(batch.index)
        if resident is not None:
            rows = resident[where.to(self.device)]
        else:
            rows = self._decode(self.logits[self.view, where.cpu().numpy()]).to(self.device)
        if self.top_k is None:
            return rows
        # compact: the token divergences read the k logits and the tail bucket from the rows; the loop expands them
        # to dense logits only for a loss that needs those (LossInputs.teacher_top_k)
        return TopKLogits(rows, self.top_k, self.num_classes)


def build_or_load(directory: Path, fingerprint: str, teacher: Callable[[Batch], Tensor], task: Task, views: int,
                  seed: int, batch_size: int = 256, log: Callable[[str], None] = print, describe: Optional[dict] = None,
                  prune: bool = True, top_k: Optional[int] = None) -> tuple[CachedTeacher, CacheInfo]:
    """The cache for `fingerprint` in `directory`: reused when complete, else built with `teacher` (a live
    teacher) over every view. With `prune` (a run directory's own cache), caches of other fingerprints there are
    stale: reported and removed; a shared directory (`prune=False`) keeps one cache per fingerprint.

    Under torchrun every rank labels its share of each view's batches and rank 0 writes the file, which holds the
    same bytes as one process's cache (each row comes from the same batch either way; the shares are added to
    zeros, which is exact). Rank 0 alone decides reuse, prunes and holds the directory's lock."""
    if not task.supports_views:
        raise RecipeError("teacher.cache needs the training data in memory (augmentation views are replayed from "
                          "it): set data.in_memory: true, or turn teacher.cache off")
    n, c = task.cache_size(), task.num_classes
    if top_k is not None and not 1 <= top_k < c:
        raise RecipeError(f"teacher.cache_top_k = {top_k} must be between 1 and {c - 1} (the task has {c} classes); "
                          "leave it unset to store every logit")
    logits_path, meta_path = directory / f"{fingerprint}.logits.npy", directory / f"{fingerprint}.json"
    # dense: [K, N, C] float16; top-k: [K, N] packed records (kd.topk)
    dtype = np.dtype(np.float16) if top_k is None else record_dtype(top_k, c)
    layout = (CACHE_FORMAT, "float16") if top_k is None else (TOP_K_FORMAT, str(dtype.descr))
    with contextlib.ExitStack() as held:
        def prepare() -> bool:  # rank 0: take the lock (processes sharing a cache_dir build each cache once), tidy up
            directory.mkdir(parents=True, exist_ok=True)
            lock = held.enter_context(open(directory / ".lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            held.callback(fcntl.flock, lock, fcntl.LOCK_UN)
            return _reusable(directory, logits_path, meta_path, views, n, c, top_k, task.VIEW_CHUNK, layout, prune,
                             log)

        if dist.on_main(prepare):
            log(f"teacher cache: reusing {logits_path} ({views} views x {n} teacher outputs)")
            build_s = None
        else:
            log(f"teacher cache: running the teacher on {views} augmentation views x {n} teacher outputs"
                + (f" on {dist.world_size()} processes" if dist.world_size() > 1 else "") + " ...")
            start = time.perf_counter()
            _build(logits_path, teacher, task, views, seed, batch_size, top_k, n, c, dtype)
            build_s = time.perf_counter() - start
            if dist.is_main():
                write_json_atomic(meta_path, {"format": layout[0], "fingerprint": fingerprint, "shape": [views, n, c],
                                              "top_k": top_k, "view_chunk": task.VIEW_CHUNK, "dtype": layout[1],
                                              "build_s": round(build_s, 3), "made_from": describe or {}})
            log(f"teacher cache: built in {build_s:.1f}s -> {logits_path}")
        dist.barrier()  # the file is complete before any rank maps it
    return (CachedTeacher(logits_path, views, seed, task.device, c, top_k, task.cache_rows),
            _info(logits_path, views, n, c, top_k, build_s, build_s is None, dtype))


def _reusable(directory, logits_path, meta_path, views, n, c, top_k, view_chunk, layout, prune, log) -> bool:
    """Whether a complete cache of this fingerprint is there; stale and half-written files are removed on the way."""
    for old in directory.glob("*.json") if prune else []:
        if old != meta_path and (directory / f"{old.stem}.logits.npy").exists():  # a logits cache, not another kind
            log(f"teacher cache {old.with_suffix('')} was made for another teacher, data or view setting: removing it")
            old.unlink()
            (directory / f"{old.stem}.logits.npy").unlink(missing_ok=True)
    if logits_path.exists() and not meta_path.exists():  # an interrupted build left the array without its JSON
        logits_path.unlink()
    for leftover in directory.glob(f".{logits_path.name}.*.tmp"):  # a build killed before its rename
        leftover.unlink()
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    if (meta.get("format") == layout[0] and meta.get("shape") == [views, n, c] and meta.get("top_k") == top_k
            and meta.get("view_chunk") == view_chunk  # another chunking is another augmentation
            and (top_k is None or meta.get("dtype") == layout[1])):  # dense: format 1 has one dtype
        return True
    if top_k is not None and meta.get("format") == CACHE_FORMAT:
        log(f"teacher cache {meta_path} holds top-k logits in the older fp32 layout: rebuilding it in the compact one")
    else:
        log(f"teacher cache {meta_path} does not match this run: rebuilding it")
    meta_path.unlink()
    logits_path.unlink(missing_ok=True)
    return False


def _build(logits_path: Path, teacher, task: Task, views: int, seed: int, batch_size: int, top_k: Optional[int],
           n: int, c: int, dtype: np.dtype) -> None:
    """Label every view and write the array (rank 0). In one process rows go straight into the memory-mapped file;
    on several ranks each labels every world-th batch into a zero array (fp32 logits or `compress_top_k` rows) that
    is summed onto rank 0, which stores it the way one process stores each batch (`store`)."""
    world, rank = dist.world_size(), dist.rank()
    width = c if top_k is None else 2 * top_k + 1  # of the fp32 rows
    shape = (views, n, c) if top_k is None else (views, n)

    def store(rows: Tensor) -> np.ndarray:
        return rows.numpy().astype(dtype) if top_k is None else pack_top_k(rows, top_k, dtype)

    with (atomic_path(logits_path) if dist.is_main() else contextlib.nullcontext()) as tmp:
        # a .npy header, then the array filled in place, view by view
        array = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=dtype, shape=shape) if tmp else None
        for v in range(views):
            filled = torch.zeros(n, dtype=torch.int32)
            share = torch.zeros(n, width, dtype=torch.float32) if world > 1 else None
            for i, batch in enumerate(task.view_batches(v, seed, batch_size)):
                if i % world != rank:
                    continue
                logits = teacher(batch).float()
                rows = (logits if top_k is None else compress_top_k(logits, top_k)).cpu()
                where = task.cache_rows(batch.index).cpu()
                if share is None:
                    array[v, where.numpy()] = store(rows)
                else:
                    share[where] = rows
                filled[where] = 1
            if share is not None:
                dist.reduce_sum(share)
                dist.reduce_sum(filled)
                if array is not None:
                    array[v] = store(share)
            # skipped samples would leave zero logits to learn from; every rank learns it (rank 0 holds the sums)
            missing = dist.broadcast(int((filled == 0).sum()) if dist.is_main() else None)
            if missing:
                raise RuntimeError(f"teacher cache: {type(task).__name__}.view_batches left {missing} of {n} training "
                                   f"rows unlabelled in view {v}")
        if array is not None:
            array.flush()
            del array


def _info(path: Path, views: int, n: int, c: int, top_k: Optional[int], build_s: Optional[float],
          reused: bool, dtype: np.dtype) -> CacheInfo:
    return CacheInfo(path=str(path), views=views, samples=n, classes=c, top_k=top_k,
                     disk_mb=round(path.stat().st_size / 1e6, 3),
                     build_s=None if build_s is None else round(build_s, 3), reused=reused,
                     bytes_per_row=dtype.itemsize * (c if top_k is None else 1))
