"""torchvision datasets that are already on disk (`torchvision:CIFAR10:<root>`). leankd never downloads: a missing
dataset is a DataError that lists the files expected under the root."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from leankd.data.decode import Decoder
from leankd.errors import DataError

# name -> (folder under root, files expected in it)
_EXPECTED = {
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "CIFAR100": ("cifar-100-python", ["train", "test", "meta"]),
    "MNIST": ("MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "FashionMNIST": ("FashionMNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
}
SUPPORTED = tuple(_EXPECTED)


class TorchvisionReader:
    def __init__(self, name: str, root: Path):
        canonical = {n.lower(): n for n in SUPPORTED}.get(name.lower())
        if canonical is None:
            raise DataError(f"unknown torchvision dataset {name!r} in 'torchvision:{name}:{root}'; "
                            f"supported: {', '.join(SUPPORTED)}.")
        self.name, self.root = canonical, root

    def _expected(self) -> list[Path]:
        folder, files = _EXPECTED[self.name]
        return [self.root / folder / f for f in files]

    def identity(self) -> str:
        stats = []
        for p in self._expected():
            st = p.stat() if p.exists() else None
            stats.append([str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
        return json.dumps(["torchvision", self.name, hashlib.sha256(json.dumps(stats).encode()).hexdigest()])

    def read(self, decoder: Decoder) -> tuple[list[str], dict[str, tuple[Tensor, Tensor]]]:
        from torchvision import datasets

        cls = getattr(datasets, self.name)
        try:
            train, test = cls(str(self.root), train=True, download=False), cls(str(self.root), train=False, download=False)
        except RuntimeError:
            raise DataError(self._not_found()) from None
        out = {split: _to_tensors(ds, decoder) for split, ds in (("train", train), ("test", test))}
        return list(train.classes), out


    def _not_found(self) -> str:
        folder, files = _EXPECTED[self.name]
        missing = [f for f in files if not (self.root / folder / f).exists()]
        if len(missing) == len(files):
            state = "none of them exist"
        elif missing:
            state = f"missing: {', '.join(missing)}"
        else:
            state = "they exist but fail torchvision's integrity check (re-fetch them)"
        hint = " (un-gzipped)" if "MNIST" in self.name else ""
        if (self.root / files[0]).exists():
            state += f"; {self.root} itself holds them: give its parent as root"
        return (f"torchvision dataset {self.name} not found under root {self.root}: expected {', '.join(files)}{hint} "
                f"in {self.root / folder}; {state}. leankd never downloads: download {self.name} yourself (e.g. once "
                f"with torchvision's download=True on a machine with internet) and point the source at that root.")


def _to_tensors(ds, decoder: Decoder) -> tuple[Tensor, Tensor]:
    """CIFAR keeps HWC numpy arrays, MNIST NHW tensors: both become uint8 [N,3,H,W] (gray replicated to RGB)."""
    data = torch.as_tensor(ds.data)
    images = data.permute(0, 3, 1, 2) if data.ndim == 4 else data.unsqueeze(1).expand(-1, 3, -1, -1)
    images = images.contiguous()
    if decoder.image_size is not None:
        images = decoder.resize_all(images)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return images, labels
