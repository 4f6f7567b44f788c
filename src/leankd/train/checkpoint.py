"""Atomic checkpoints: ONE safetensors file holds the model weights, the optimizer's tensors, and (in its
metadata) the JSON training state, so there is never a weights file that disagrees with its state file.
The file is written to a temporary name and renamed over the old one: a kill at any moment leaves either the
previous checkpoint or the new one, never a torn one."""
from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..errors import LeanKDError
from ..io import atomic_path

_STATE_KEY = "leankd_state"


def _cpu_tensors(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights), and we must not alias live params
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_weights(path: str | Path, model: nn.Module, metadata: Optional[dict[str, str]] = None) -> None:
    """Weights only (the shippable artifact)."""
    tensors = _cpu_tensors(unwrap(model).state_dict(), "")
    with atomic_path(path, size_hint=_nbytes(tensors)) as tmp:
        _save_file(tensors, tmp, metadata or {})


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """About what the file needs on disk: the tensor bytes (the JSON header is small beside them)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' writer, with a full disk reported as the OSError it is (the Rust writer wraps it in a
    SafetensorError), so `atomic_path` turns it into a clear error naming the directory."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        text = str(e)
        if "StorageFull" in text or "os error 28" in text or "code: 28" in text:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile / DDP wrappers, so state_dict keys never carry their prefixes."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _split_optimizer_state(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        plain_state[str(pid)] = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
                plain_state[str(pid)][name] = {"__tensor__": f"optim.{pid}.{name}"}
            else:
                plain_state[str(pid)][name] = value
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def _join_optimizer_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {}
    for pid, pstate in meta["state"].items():
        state[int(pid)] = {
            name: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v for name, v in pstate.items()
        }
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Saved state is contiguous; a channels_last parameter needs its moment buffers in the same memory layout
    (fused CUDA optimizers reject mixed strides)."""
    for param, state in optimizer.state.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON training state of a checkpoint without loading its tensors ({} if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()[_STATE_KEY])["state"]
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError):
        return {}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Optional[torch.amp.GradScaler],
    state: dict[str, Any],
    extra_modules: Optional[dict[str, nn.Module]] = None,
    full: Optional[tuple[dict, dict]] = None,
) -> None:
    """`state` is any JSON-serializable training state (epoch, history, elapsed time...). `full`: the (model,
    optimizer) state dicts already gathered from a sharded model (`fsdp.full_state`, which every rank calls); they are
    written in the same format as a plain model's, and the extra modules' tensors are read from the model one."""
    if full is None:
        tensors = _cpu_tensors(unwrap(model).state_dict(), "model.")
        for name, module in (extra_modules or {}).items():
            tensors.update(_cpu_tensors(module.state_dict(), f"extra.{name}."))
        opt_tensors, opt_meta = _split_optimizer_state(optimizer)
    else:
        tensors = _cpu_tensors(full[0], "model.")
        for name, module in (extra_modules or {}).items():  # trainable loss parts are never sharded
            tensors.update(_cpu_tensors(module.state_dict(), f"extra.{name}."))
        opt_tensors, opt_meta = _split_optimizer_state(full[1])
    tensors.update(opt_tensors)
    meta = {
        "state": state,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with atomic_path(path, size_hint=_nbytes(tensors)) as tmp:
        _save_file(tensors, tmp, {_STATE_KEY: json.dumps(meta)})


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Optional[torch.amp.GradScaler],
    extra_modules: Optional[dict[str, nn.Module]] = None,
    sharded: bool = False,
) -> dict[str, Any]:
    """Restore everything in place; return the JSON `state` that was saved. `sharded`: `model` is FSDP-sharded;
    every rank reads the full state dicts from the file and keeps its own share (`fsdp.load_full_state`)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[_STATE_KEY])
        tensors = load_file(str(path))
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise LeanKDError(f"checkpoint {path} cannot be read ({e}); delete it or rerun with --force") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not sharded:
        unwrap(model).load_state_dict(model_sd)
    for name, module in (extra_modules or {}).items():
        prefix = f"extra.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if sharded:
        from . import fsdp

        fsdp.load_full_state(model, optimizer, model_sd, _join_optimizer_state(meta["optimizer"], tensors),
                             extra_modules)
    else:
        optimizer.load_state_dict(_join_optimizer_state(meta["optimizer"], tensors))
        _match_param_layouts(optimizer)
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta["scaler"] is not None:
        scaler.load_state_dict(meta["scaler"])
    return meta["state"]
