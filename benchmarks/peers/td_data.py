"""Dataset over the `.pt` file written by prepare_data.py, and the CIFAR transforms, for both peers.

Why a module of its own: torchdistill 1.x builds datasets in its YAML with `!import_call`, so the class
must be importable by name (`td_data.PreparedCifar10`); the plain PyTorch loop uses the very same class
and transforms, so the two peers cannot differ in data handling. Images stay uint8 [3,32,32] tensors;
the transforms (torchvision, tensor input) do crop/flip on uint8, then scale to [0,1] like ToTensor and
normalise — the per-sample DataLoader pipeline of the PyTorch KD tutorial.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import Dataset
from torchvision import transforms

# the usual CIFAR-10 statistics (leankd's CIFAR10_MEAN/STD too)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class PreparedCifar10(Dataset):
    """(image, label) pairs of one split ('train' or 'test') of a prepare_data.py file."""

    def __init__(self, path: str, split: str, transform=None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        data = _load(str(path))
        self.x, self.y = data[f"{split}_x"], data[f"{split}_y"]
        self.classes = list(data["classes"])
        self.targets = self.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.y[i])


def train_transform() -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ConvertImageDtype(torch.float32),
        transforms.Normalize(MEAN, STD),
    ])


def test_transform() -> transforms.Compose:
    return transforms.Compose([transforms.ConvertImageDtype(torch.float32), transforms.Normalize(MEAN, STD)])
