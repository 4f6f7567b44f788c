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
        except RuntimeError as e:
            folder, files = _EXPECTED[self.name]
            missing = [str(p) for p in self._expected() if not p.exists()]
            raise DataError(
                f"torchvision dataset {self.name} not found (or corrupted) under root {self.root}: expected "
                f"{', '.join(files)} in {self.root / folder}"
                + (f"; missing: {', '.join(missing)}" if missing else "; the files exist but fail torchvision's check")
                + f". leankd never downloads: fetch {self.name} yourself (e.g. once with torchvision's download=True, "
                f"MNIST-style files un-gzipped) and point the source at that root. ({e})"
            ) from None
        out = {split: _to_tensors(ds, decoder) for split, ds in (("train", train), ("test", test))}
        return list(train.classes), out


def _to_tensors(ds, decoder: Decoder) -> tuple[Tensor, Tensor]:
    """CIFAR keeps HWC numpy arrays, MNIST NHW tensors: both become uint8 [N,3,H,W] (gray replicated to RGB)."""
    data = torch.as_tensor(ds.data)
    images = data.permute(0, 3, 1, 2) if data.ndim == 4 else data.unsqueeze(1).expand(-1, 3, -1, -1)
    images = images.contiguous()
    if decoder.image_size is not None:
        images = decoder.resize_all(images)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return images, labels
