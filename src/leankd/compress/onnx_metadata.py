"""What an ONNX file's user needs besides the graph, stored in the file itself (`ModelProto.metadata_props`, read
with `onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`): the task kind, the class names in
output order, the preprocessing the task applied before the model (an image task's mean/std, size and layout, a
text task's tokenizer and length) and the leankd version. Without it a deployed `.onnx` file is a graph whose
inputs nobody can reproduce from the file alone.

Values are strings (ONNX stores string pairs): text as is, everything else (lists, numbers, booleans) as JSON.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..io import atomic_path
from .onnx_common import _require


def onnx_metadata(task, model: nn.Module) -> dict[str, str]:
    """The metadata of an ONNX export of `model` for `task` (`Task.deploy_metadata`), as ONNX string pairs. An
    object that only acts as a task (no `deploy_metadata`: a test's or a user's stand-in) gives the version only."""
    from ..core.version import __version__

    described = getattr(task, "deploy_metadata", None)
    meta: dict[str, Any] = {"producer": "leankd", "leankd_version": __version__,
                            **(described(model) if described is not None else {})}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def set_metadata(proto, metadata: Mapping[str, str]) -> None:
    """Put `metadata` into a loaded `ModelProto` (a key already there is replaced; others stay)."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (its weights are not read)."""
    onnx = _require("onnx")
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def write_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Add `metadata` to the ONNX file `path` (keys already there are replaced), rewriting it atomically."""
    onnx = _require("onnx")
    if not metadata:
        return
    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, metadata)
    with atomic_path(Path(path)) as tmp:
        onnx.save(proto, str(tmp))


def copy_metadata(src: Path, dst: Path) -> None:
    """Give `dst` (e.g. the int8 file quantized from `src`) the metadata of `src`."""
    write_metadata(dst, read_metadata(src))
