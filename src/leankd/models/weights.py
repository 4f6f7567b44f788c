"""Load local weight files into a built model, and read a model's class count.

Checkpoints come from many trainers (DDP, torch.compile, Lightning-style dicts); this
accepts the common wrappings but refuses a partial load: a silently half-loaded teacher
would make every distillation result meaningless.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from leankd.errors import ModelError

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_NESTING_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_MAX_LISTED = 5


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a `.safetensors` or `.pt/.pth/.bin` state dict into `model` (strictly) and return it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path} (resolved to {path.resolve()})")
    state = _unwrap(_read(path), path)
    state = _strip_prefixes(state, model.state_dict().keys())
    state = _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def _read(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ModelError(f"cannot read safetensors file {path}: {exc}") from exc
    if suffix in _TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelError(
                f"{path} holds pickled objects other than tensors, which weights_only loading refuses "
                f"for safety. Re-save it with torch.save(model.state_dict(), path) or as .safetensors."
            ) from exc
        except Exception as exc:
            raise ModelError(f"cannot read torch file {path}: {type(exc).__name__}: {exc}") from exc
    raise ModelError(
        f"unsupported weights file {path}: suffix {suffix or '(none)'!r}; "
        f"use .safetensors or one of {', '.join(_TORCH_SUFFIXES)}"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend through {'state_dict': ...}-style wrappers until a plain name->tensor dict."""
    for _ in range(len(_NESTING_KEYS) + 1):
        if _is_state_dict(obj) or not isinstance(obj, Mapping):
            break
        key = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    if not _is_state_dict(obj):
        found = f"keys {list(obj)[:10]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise ModelError(
            f"{path} does not hold a state dict (name -> tensor); found {found}. "
            f"Expected a state dict, possibly under one of {', '.join(_NESTING_KEYS)}."
        )
    return dict(obj)


def _strip_prefixes(state: dict[str, torch.Tensor], model_keys: object) -> dict[str, torch.Tensor]:
    model_keys = list(model_keys)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _head_names(model: nn.Module) -> set[str]:
    """Parameter names of the final Linear, where a shape mismatch means a different class count."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return set() if last is None else {f"{last}.weight", f"{last}.bias"}


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"; ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): " + "; ".join(shown) + more


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Raise ModelError describing every key/shape disagreement; return the state ready to load."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    # Old checkpoints predate BatchNorm's step counter; it does not affect inference.
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    unexpected = [k for k in state if k not in expected]
    heads = _head_names(model)
    mismatched = []
    for key, want in expected.items():
        if key in state and state[key].shape != want.shape:
            got = tuple(state[key].shape)
            hint = " — num_classes differs?" if key in heads and got[1:] == tuple(want.shape)[1:] else ""
            mismatched.append(f"{key}: checkpoint {got} vs model {tuple(want.shape)}{hint}")
    if missing or unexpected or mismatched:
        msg = f"weights in {path} do not fit {type(model).__name__}:"
        if missing:
            msg += _listing("missing from checkpoint", missing)
        if unexpected:
            msg += _listing("unexpected in checkpoint", unexpected)
        if mismatched:
            msg += _listing("shape mismatch", mismatched)
        msg += "\nBuild the same architecture (and num_classes) the checkpoint was saved from."
        raise ModelError(msg)
    for key in tolerated:
        state[key] = expected[key]
    return state


def infer_num_classes(model: nn.Module) -> int | None:
    """Class count of `model`'s head, or None if it has no recognisable classifier.

    Order: a `num_classes` attribute (leankd, timm, some torchvision models), timm's
    `get_classifier()`, then the last nn.Linear in `model.modules()` order.
    """
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, (tuple, list)) and head:  # distilled timm models return (head, head_dist)
            head = head[0]
        if isinstance(head, nn.Linear):
            return head.out_features
        if isinstance(head, nn.Conv2d):
            return head.out_channels
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return None if last is None else last.out_features
