"""WebDataset-style tar shards as a stream of decoded images: `data.source: webdataset:train-{000000..000003}.tar`.

Why our own few lines and not the `webdataset` package: the sequential tar reader (`tarstream.iter_tar`) and the
image decoders (`decode.Decoder`) are the ones every other image source uses, so a sample decodes to the same
tensor from a shard as from an ImageFolder, and no dependency is added. The format is WebDataset's: members that
share a key (the member path up to the first dot of its file name) are one sample, e.g. `n01.jpg` + `n01.cls`; the
label is `KEY.cls` (or `KEY.label`: an integer class index, or a class name) or `KEY.json` with a `label` (or
`cls`) field; the image is the member with an image extension (.jpg, .jpeg, .png, .bmp, .webp).

A label pass (`scan_shards`) reads every shard once before training without decoding an image: it counts the
samples (an epoch's length, for the LR schedule), finds the classes, and fails on a sample without a label or image
before anything trains.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from leankd.data.decode import Decoder
from leankd.data.layout import IMAGE_EXTENSIONS, is_hidden
from leankd.data.tarstream import iter_tar
from leankd.errors import DataError

LABEL_EXTENSIONS = ("cls", "label", "json")
Label = Union[int, str]
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` -> each; several braces
    multiply out, in order (the `braceexpand` rules WebDataset uses, for the common cases)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise DataError(f"shard pattern {pattern!r}: {{{body}}} is neither a range like {{000000..000009}} nor a "
                        "list like {train,extra}: fix the braces")
    return [h + t for item in items for h in [head + item] for t in expand_braces(tail)]


def shard_paths(pattern: str, what: str) -> list[Path]:
    """The shard files a pattern names, every one of them present (a missing shard is an error naming it)."""
    paths = [Path(p).expanduser() for p in expand_braces(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{what}: {len(missing)} of the {len(paths)} shards of {pattern!r} not found ({shown}): fix "
                        "the pattern's directory or range (relative paths are read from the directory you run "
                        "leankd in)")
    return paths


def files_identity(paths: list[Path]) -> str:
    """A cheap identity of files (paths, sizes, mtimes), so a changed shard set is never reused silently."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(json.dumps([str(p.resolve()), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:16]


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member: `a/n01.seg.png` -> ('a/n01', 'seg.png')."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def samples(path: Path) -> Iterator[tuple[str, dict[str, bytearray]]]:
    """(key, {extension: bytes}) of each sample of a shard, in archive order (a sample's members are consecutive)."""
    key, members = None, {}
    try:
        for name, is_dir, data in iter_tar(path, want=lambda n: not is_hidden(_clean(n))):
            if is_dir or data is None:
                continue
            k, ext = split_key(_clean(name))
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext] = data
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        reason = (str(e).splitlines() or [""])[0].rstrip(":")
        raise DataError(f"cannot read shard {path} ({e.__class__.__name__}: {reason}); check that it is a complete "
                        "tar (re-copy or re-create it)") from None
    if members:
        yield key, members


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _image_ext(members: dict) -> Optional[str]:
    return next((ext for ext in members if ("." + ext.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS), None)


def sample_label(key: str, members: dict, where: str) -> Label:
    """A sample's label: `.cls`/`.label` text (an integer index or a class name), or `.json`'s label/cls field."""
    for ext in LABEL_EXTENSIONS:
        if ext not in members:
            continue
        text = bytes(members[ext]).decode("utf-8", "replace").strip()
        if ext == "json":
            try:
                meta = json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{where}: {key}.json is not valid JSON: fix it, or give the label as {key}.cls") \
                    from None
            value = next((meta[k] for k in ("label", "cls") if isinstance(meta, dict) and k in meta), None)
            if value is None:
                continue
            text = str(value).strip()
        if text:
            return int(text) if re.fullmatch(r"\d+", text) else text
    raise DataError(f"{where}: sample {key!r} has no label (its members: {', '.join(sorted(members))}): add "
                    f"{key}.cls holding its class index (or class name), or a {key}.json with a \"label\" field")


@dataclass
class ShardScan:
    """What the label pass found: samples per shard, and every label in stream order."""
    counts: list[int] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)


def scan_shards(paths: list[Path], what: str) -> ShardScan:
    """Read every shard once (no image decoded): count samples, collect labels, refuse a sample with no image or no
    label, naming the shard and the key."""
    scan = ShardScan()
    for path in paths:
        n = 0
        for key, members in samples(path):
            where = f"{what} shard {path}"
            if _image_ext(members) is None:
                raise DataError(f"{where}: sample {key!r} has no image (its members: {', '.join(sorted(members))}): "
                                f"each sample needs {key}.jpg/.png (or {', '.join(IMAGE_EXTENSIONS)}) beside its "
                                "label")
            scan.labels.append(sample_label(key, members, where))
            n += 1
        if n == 0:
            raise DataError(f"{what}: shard {path} holds no samples: remove it from the pattern or re-create it")
        scan.counts.append(n)
    return scan


def first_sample(paths: list[Path], what: str) -> tuple[str, Label, str]:
    """(key, label, image member) of the first sample: what `leankd validate` checks without a full pass."""
    for key, members in samples(paths[0]):
        where = f"{what} shard {paths[0]}"
        image = _image_ext(members)
        if image is None:
            raise DataError(f"{where}: sample {key!r} has no image (its members: {', '.join(sorted(members))}): each "
                            f"sample needs {key}.jpg/.png beside its label")
        return key, sample_label(key, members, where), f"{key}.{image}"
    raise DataError(f"{what}: shard {paths[0]} holds no samples: re-create it")


def class_index(labels: list[Label], num_classes: Optional[int], what: str) -> tuple[list[str], Optional[dict]]:
    """(class names, name -> index map or None for integer labels), checked against `num_classes` when given."""
    names = {x for x in labels if isinstance(x, str)}
    if names and len(names) != len(set(labels)):
        raise DataError(f"{what}: labels mix class indices and class names: give every sample one kind")
    if names:
        classes = sorted(names)
        if num_classes is not None and num_classes != len(classes):
            raise DataError(f"{what}: data.stream.num_classes is {num_classes} but the labels name {len(classes)} "
                            "classes: fix num_classes or remove it")
        return classes, {c: i for i, c in enumerate(classes)}
    top = max(labels) if labels else -1
    if num_classes is not None and top >= num_classes:
        raise DataError(f"{what}: a label is {top} but data.stream.num_classes is {num_classes}: raise num_classes "
                        "or fix the labels")
    return [str(i) for i in range(num_classes if num_classes is not None else top + 1)], None


def quotas(counts: list[int], limit: Optional[int]) -> Optional[list[int]]:
    """Samples read from each shard so that the first `limit` of the stream (in shard order) are kept."""
    if limit is None or limit >= sum(counts):
        return None
    out, left = [], limit
    for n in counts:
        out.append(min(n, left))
        left -= out[-1]
    return out


class RankShare:
    """Which examples of a pass this process decodes under torchrun. Every rank reads the whole stream (the same
    global batches as one process), but the loop trains each rank on rows `shard_bounds(B, rank, world)` of every
    batch of B: the other rows are read, never decoded, and stand in as zeros that nothing reads. Example j of a
    DataLoader worker's sequence is row j % B of that worker's batch (full batches: `drop_last`)."""

    def __init__(self, batch_size: int = 1, rank: int = 0, world: int = 1, shape: tuple = ()):
        self.batch_size, self.shape = batch_size, tuple(shape)
        self.start, self.end = batch_size * rank // world, batch_size * (rank + 1) // world
        self.everything = world == 1 or not self.shape

    def decodes(self, position: int) -> bool:
        return self.everything or self.start <= position % self.batch_size < self.end

    def stand_in(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=torch.uint8)


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of `size` items (WebDataset's): each item leaves at a random time within the window."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class PassStream(IterableDataset):
    """What the task sets on a streamed dataset before each pass, shared by the tar-shard and Hugging Face streams:
    the epoch (their shuffle is drawn from (seed, epoch)) and this rank's share of every batch (`RankShare`), plus
    the length the label pass counted. Subclasses set `epoch`, `share` and `length` in their constructor."""

    epoch: int
    share: RankShare
    length: Optional[int]

    def set_epoch(self, epoch: int) -> None:
        """Which pass this is (the task sets it before each pass): the shuffle is drawn from (seed, epoch)."""
        self.epoch = int(epoch)

    def set_share(self, share: RankShare) -> None:
        """Under torchrun: decode only this rank's rows of each batch (`RankShare`); the task sets it per pass."""
        self.share = share

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this stream's length is unknown (no label pass)")
        return self.length


class ShardStream(PassStream):
    """The samples of tar shards as (uint8 [3, H, W] image, class index), decoded as an ImageFolder's would be.

    `shuffle` > 0: each pass reads the shards in an order drawn from (seed, epoch) through a buffer of that many
    encoded samples (decoding happens as a sample leaves it). DataLoader workers split the shards between them
    (worker w reads every n-th shard of the pass's order). `quota[i]`: read only the first quota[i] samples of
    shard i (`data.limit_train`: the stream's first N examples). `length`: examples of one pass (from the label
    pass), None when unknown (an endless or uncounted stream has no `__len__`)."""

    def __init__(self, paths: list[Path], labels: Optional[dict], image_size: Optional[int], shuffle: int = 0,
                 seed: int = 0, quota: Optional[list[int]] = None, length: Optional[int] = None,
                 what: str = "train_data", num_classes: Optional[int] = None):
        self.paths, self.labels, self.image_size = list(paths), labels, image_size
        self.num_classes = num_classes
        self.shuffle, self.seed, self.quota, self.length, self.what = shuffle, seed, quota, length, what
        self.epoch, self.share = 0, RankShare()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(f"{self.seed}/{self.epoch}/{worker}")
        order = list(range(len(self.paths)))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)  # the same shard order in every worker
        records = self._records(order[worker::workers])
        if self.shuffle:
            records = shuffled(records, self.shuffle, rng)
        decoder = Decoder(self.image_size)
        for position, (name, blob, label) in enumerate(records):
            if not self.share.decodes(position):
                yield self.share.stand_in(), label
                continue
            data = torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
            yield decoder.decode([name], [data])[0], label

    def _records(self, shards: list[int]) -> Iterator[tuple[str, bytearray, int]]:
        for i in shards:
            path, take = self.paths[i], None if self.quota is None else self.quota[i]
            if take == 0:
                continue
            where = f"{self.what} shard {path}"
            for n, (key, members) in enumerate(samples(path)):
                if take is not None and n >= take:
                    break
                image = _image_ext(members)
                if image is None:
                    raise DataError(f"{where}: sample {key!r} has no image (its members: "
                                    f"{', '.join(sorted(members))}): each sample needs {key}.jpg/.png")
                label = sample_label(key, members, where)
                if self.labels is not None:
                    if label not in self.labels:
                        raise DataError(f"{where}: sample {key!r} has label {label!r}, not one of the classes "
                                        f"{sorted(self.labels)}: fix the label (or data.stream.num_classes)")
                    label = self.labels[label]
                elif isinstance(label, str):
                    raise DataError(f"{where}: sample {key!r} has a class name {label!r} for a label, and class "
                                    "names need the label pass: remove data.stream.steps_per_epoch, or label the "
                                    "samples with class indices")
                elif self.num_classes is not None and label >= self.num_classes:
                    raise DataError(f"{where}: sample {key!r} has label {label}, but there are {self.num_classes} "
                                    "classes (data.stream.num_classes): fix the label or num_classes")
                yield f"{path}:{key}.{image}", members[image], label
