"""On-disk cache of decoded images (safetensors), so a 60k-image JPEG set is decoded once, not on every run. The key
covers the source's identity (path, size, mtime; file list for folders) and the requested image size."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from torch import Tensor

from leankd.io import atomic_path

CACHE_VERSION = 1  # bump when the decoded result for the same key could change


def cache_key(identity: str, image_size: int | None) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, identity, image_size]).encode()).hexdigest()


def cache_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"images-{key[:32]}.safetensors"


def load_cached(path: Path, key: str) -> tuple[dict[str, str], dict[str, Tensor]] | None:
    """(metadata, tensors) if `path` holds this key, else None. A damaged file is a miss (it will be rewritten)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            return None
        return meta, load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated/foreign file must not stop the run
        warnings.warn(f"ignoring unreadable image cache {path} ({e.__class__.__name__}: {e}); it will be rebuilt.")
        return None


def save_cached(path: Path, key: str, meta: dict[str, str], tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={**meta, "key": key})


def encode_classes(classes: list[str]) -> str:
    return json.dumps(classes)


def decode_classes(text: str) -> list[str]:
    return list(json.loads(text))
