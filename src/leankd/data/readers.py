"""Readers for image folders and tar archives of them. Each reader has a cheap `identity()` (what the on-disk cache
is keyed on: paths, sizes, mtimes; no decoding) and `read(decoder)` giving the decoded splits."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import read_file

from leankd.data.decode import Decoder, decode_one, quiet_io
from leankd.data.tarstream import read_tar
from leankd.data.layout import Layout, find_layout, is_hidden, is_image_name, scan_directory
from leankd.errors import DataError

# What every reader returns: sorted class names and split -> (uint8 [N,3,H,W], int64 [N]).
RawImages = tuple[list[str], dict[str, tuple[Tensor, Tensor]]]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_tar_path(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES) or (path.is_file() and tarfile.is_tarfile(path))


def file_identity(path: Path) -> str:
    st = path.stat()
    return json.dumps(["file", str(path.resolve()), st.st_size, st.st_mtime_ns])


class FolderReader:
    """An ImageFolder directory on disk (scanned once at construction)."""

    def __init__(self, root: Path):
        self.root = root
        files, dirs, self.stats = scan_directory(root)
        self.layout: Layout = find_layout(files, dirs, where=str(root))

    def identity(self) -> str:
        h = hashlib.sha256(json.dumps(self.stats).encode())
        return json.dumps(["folder", str(self.root.resolve()), h.hexdigest()])

    def read(self, decoder: Decoder) -> RawImages:
        out = {}
        for split in self.layout.splits:
            paths, labels = self.layout.items(split)
            full = [str(self.root / p) for p in paths]
            blobs = [read_bytes(p) for p in full]
            out[split] = (decoder.decode(full, blobs), torch.tensor(labels, dtype=torch.int64))
        return self.layout.classes, out


class TarReader:
    """A tar (optionally gz/bz2/xz-compressed) of an ImageFolder directory, read in one streaming pass in memory:
    nothing is extracted to disk, and compressed archives are never seeked backwards."""

    def __init__(self, path: Path):
        self.path = path

    def identity(self) -> str:
        return file_identity(self.path)

    def read(self, decoder: Decoder) -> RawImages:
        blobs, dirs = self._members()
        layout = find_layout(blobs.keys(), dirs, where=str(self.path))
        out = {}
        for split in layout.splits:
            names, labels = layout.items(split)
            shown = [f"{self.path}:{n}" for n in names]
            out[split] = (decoder.decode(shown, [blobs[n] for n in names]), torch.tensor(labels, dtype=torch.int64))
        return layout.classes, out

    def _members(self) -> tuple[dict[str, Tensor], list[str]]:
        blobs: dict[str, Tensor] = {}
        dirs: list[str] = []
        try:
            members = read_tar(self.path, want=lambda n: is_image_name(n) and not is_hidden(_clean_member_name(n)))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"cannot read tar archive {self.path} ({e.__class__.__name__}: {e}); "
                            f"check that the file is a complete .tar/.tar.gz (re-copy or re-create it).") from None
        for raw_name, is_dir, data in members:
            name = _clean_member_name(raw_name)
            if not name or is_hidden(name):
                continue
            if is_dir:
                dirs.append(name)
            elif data is not None:
                blobs[name] = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return blobs, dirs


def _clean_member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


@quiet_io
def read_bytes(path: str) -> Tensor:
    """The encoded bytes of one file as a uint8 tensor, with a DataError naming the file if it cannot be read."""
    try:
        return read_file(path)
    except (OSError, RuntimeError) as e:
        reason = str(e).splitlines()[0].split(", ")[-1][:200]
        raise DataError(f"cannot read image file {path!r} ({reason}); check that it exists, is readable and is "
                        f"not empty.") from None


def decode_file(path: str) -> Tensor:
    """Read and decode one image file (used by the streaming dataset)."""
    return decode_one(path, read_bytes(path))
