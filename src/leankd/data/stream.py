"""A disk-backed Dataset for ImageFolder directories too large to hold in memory: same layout rules and decoding
as `load_images`, and it yields uint8 CHW tensors, so DataLoader batches go through the same on-device
`ImageAugment` as the in-memory path."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from leankd.data.decode import resize_square
from leankd.data.layout import find_layout, scan_directory
from leankd.data.readers import decode_file
from leankd.errors import DataError


class ImageFolderStream(Dataset):
    """`split` is 'train' or 'test' ('val' is accepted for 'test': a test/ or val/ folder, whichever exists).

    With `image_size` every image is resized to image_size x image_size; without it images keep their size and
    must all match for default batching."""

    def __init__(self, root: str | Path, *, split: str = "train", image_size: int | None = None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"ImageFolderStream needs an ImageFolder directory; {root} is not one"
                            + (" (extract the archive first, or use load_images for tars)." if root.is_file() else "."))
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
        split = {"val": "test"}.get(split, split)
        files, dirs, _ = scan_directory(root)
        layout = find_layout(files, dirs, where=str(root))
        if split not in layout.splits:
            raise DataError(f"{root} has no {split!r} split (found {sorted(layout.splits)}); a test split needs "
                            f"{root}/test/<class>/... or {root}/val/<class>/... next to train/.")
        rel, labels = layout.items(split)
        self.root = root
        self.split = split
        self.image_size = image_size
        self.classes: list[str] = layout.classes
        self.paths: list[str] = [str(root / p) for p in rel]
        self.labels: Tensor = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = decode_file(self.paths[index])
        if self.image_size is not None:
            img = resize_square(img, self.image_size)
        return img, int(self.labels[index])
