"""Turn encoded image bytes into one uint8 [N,3,H,W] tensor, fast: JPEGs go through decode_jpeg's list API in
batches, other formats one by one, straight into one preallocated tensor; every image is forced to RGB and to one
common size (checked, or resized when image_size is given)."""
from __future__ import annotations

import functools
import io
import warnings
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from leankd.errors import DataError

F = TypeVar("F", bound=Callable)


def quiet_io(fn: F) -> F:
    """Silence torchvision 0.29's per-call DeprecationWarning for its image codecs (superseded by TorchCodec, which is
    not a dependency): it would fire once per image. Remove when leankd moves to TorchCodec."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                    category=DeprecationWarning)
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


BATCH = 256  # images per decode_jpeg call: amortizes the call, yet a batch of large photos stays ~100 MB


@quiet_io
def decode_one(name: str, data: Tensor) -> Tensor:
    """Decode one encoded image to uint8 RGB CHW; BMP (unsupported by torchvision.io) goes through Pillow."""
    try:
        if name.lower().endswith(".bmp"):
            return _decode_pil(data)
        img = decode_image(data, mode=ImageReadMode.RGB)
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        raise DataError(f"cannot decode image {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); "
                        f"remove or replace the file.") from None
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = ((img.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    return img


def resize_square(img: Tensor, size: int) -> Tensor:
    """Resize [..,C,H,W] uint8 to size x size with antialiasing (aspect ratio is not kept: all images must match)."""
    if img.shape[-2:] == (size, size):
        return img
    return TF.resize(img, [size, size], antialias=True)


class Decoder:
    """Decodes lists of images and remembers the first image's size, so that every later image (train and test)
    is checked against it, and a mismatch names two concrete files."""

    def __init__(self, image_size: int | None = None):
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
        self.image_size = image_size
        self.reference: tuple[str, tuple[int, int]] | None = None

    @quiet_io
    def decode(self, names: Sequence[str], blobs: Sequence[Tensor]) -> Tensor:
        n = len(names)
        out: Tensor | None = None
        for start in range(0, n, BATCH):
            batch_names = names[start:start + BATCH]
            imgs = self._fit(batch_names, self._decode_batch(batch_names, blobs[start:start + BATCH]))
            if out is None:
                out = torch.empty((n, *imgs[0].shape), dtype=torch.uint8)
            if isinstance(imgs, Tensor):
                out[start:start + len(imgs)] = imgs
            else:
                torch.stack(imgs, out=out[start:start + len(imgs)])
        if out is None:
            raise DataError("no images to decode.")
        return out

    def resize_all(self, images: Tensor) -> Tensor:
        """Resize an already decoded uint8 [N,3,H,W] tensor in chunks (resizing works in float: 4x the memory)."""
        if self.image_size is None or images.shape[-2:] == (self.image_size, self.image_size):
            return images
        out = torch.empty((images.shape[0], images.shape[1], self.image_size, self.image_size), dtype=torch.uint8)
        for start in range(0, images.shape[0], BATCH * 8):
            out[start:start + BATCH * 8] = resize_square(images[start:start + BATCH * 8], self.image_size)
        return out

    def _decode_batch(self, names: Sequence[str], blobs: Sequence[Tensor]) -> list[Tensor]:
        jpeg_idx = [i for i, name in enumerate(names) if name.lower().endswith((".jpg", ".jpeg"))]
        imgs: list[Tensor | None] = [None] * len(blobs)
        if jpeg_idx:
            try:
                for i, img in zip(jpeg_idx, decode_jpeg([blobs[i] for i in jpeg_idx], mode=ImageReadMode.RGB)):
                    imgs[i] = img
            except Exception:  # noqa: BLE001 - one bad file fails the batch: redo one by one to name it
                pass
        for i, img in enumerate(imgs):
            if img is None:
                imgs[i] = decode_one(names[i], blobs[i])
        return imgs  # type: ignore[return-value]

    def _fit(self, names: Sequence[str], imgs: list[Tensor]) -> list[Tensor] | Tensor:
        """Bring one batch to the common size: resize (grouped by input size, so uniform data is one call) or check."""
        if self.image_size is not None:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, img in enumerate(imgs):
                groups.setdefault(tuple(img.shape), []).append(i)
            out = torch.empty((len(imgs), 3, self.image_size, self.image_size), dtype=torch.uint8)
            for idx in groups.values():
                out[idx] = resize_square(torch.stack([imgs[i] for i in idx]), self.image_size)
            return out
        if self.reference is None:
            self.reference = (names[0], tuple(imgs[0].shape[-2:]))
        ref_name, ref_size = self.reference
        for name, img in zip(names, imgs):
            size = tuple(img.shape[-2:])
            if size != ref_size:
                raise DataError(
                    f"images have different sizes: {ref_name!r} is {ref_size[1]}x{ref_size[0]} but {name!r} is "
                    f"{size[1]}x{size[0]} (width x height). Pass image_size=<pixels> to resize every image to a "
                    f"square of that side."
                )
        return imgs


def _decode_pil(data: Tensor) -> Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        rgb = im.convert("RGB")
        arr = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return arr.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()
