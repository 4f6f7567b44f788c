"""Build models that live outside the registry: torchvision, timm, Hugging Face checkpoints in local folders
(`hf:PATH`, see hf.py), or any importable callable.

torchvision, timm and transformers are imported only when asked for (each costs seconds to import).
Nothing here downloads: pretrained weights are refused, and users load local files with
`load_weights` instead.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from typing import Callable, Mapping

from torch import nn

from leankd.errors import ModelError
from leankd.models._kwargs import accepts, check_kwargs

PREFIXES = ("torchvision:", "timm:", "python:", "hf:")

# Keys that would make torchvision/timm fetch weights from the internet.
_DOWNLOAD_KEYS = {
    "torchvision": ("weights", "weights_backbone", "pretrained"),
    "timm": ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay"),
}


def is_hub_name(name: str) -> bool:
    return name.startswith(PREFIXES)


def create_hub_model(name: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    """Dispatch `prefix:rest` to its builder."""
    prefix, _, rest = name.partition(":")
    if not rest:
        raise ModelError(f"model {name!r} names nothing after {prefix + ':'!r}, e.g. '{prefix}:resnet18'")
    builders: dict[str, Callable[[str, int, Mapping[str, object]], nn.Module]] = {
        "torchvision": _torchvision,
        "timm": _timm,
        "python": _python,
        "hf": _hf,
    }
    return builders[prefix](rest, num_classes, kwargs)


def _hf(name: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    from leankd.models.hf import create_hf_model  # transformers is imported only when asked for

    return create_hf_model(name, num_classes, kwargs)


def _refuse_downloads(source: str, name: str, kwargs: Mapping[str, object]) -> None:
    for key in _DOWNLOAD_KEYS[source]:
        if key in kwargs:
            raise ModelError(
                f"{source}:{name}: keyword {key!r} is not allowed; leankd never downloads weights. "
                f"Build without it and load a local file: in a recipe `teacher.checkpoint: path/to/weights` (or "
                f"`student.checkpoint:`; .safetensors, or a .pt/.pth state dict), in Python "
                f"`leankd.models.load_weights(model, path)`."
            )


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else "no close matches."


def _torchvision(name: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    import torchvision

    _refuse_downloads("torchvision", name, kwargs)
    available = torchvision.models.list_models()
    if name not in available:
        raise ModelError(
            f"unknown torchvision model {name!r}; {_suggest(name, available)} "
            f"See torchvision.models.list_models() for all {len(available)} names."
        )
    extra = dict(kwargs)
    # Detection builders default weights_backbone to ImageNet weights, i.e. a download.
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        extra["weights_backbone"] = None
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    except TypeError as exc:
        raise ModelError(f"torchvision:{name} rejected keyword(s) {sorted(kwargs)}: {exc}") from exc


def _timm(name: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    import timm

    _refuse_downloads("timm", name, kwargs)
    if not timm.is_model(name):
        available = timm.list_models()
        raise ModelError(
            f"unknown timm model {name!r}; {_suggest(name, available)} "
            f"See timm.list_models() for all {len(available)} names."
        )
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm:{name} rejected keyword(s) {sorted(kwargs)}: {exc}") from exc


def _import(module_name: str, spec: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if missing == module_name or module_name.startswith(missing + "."):
            top = module_name.split(".")[0]
            raise ModelError(
                f"{spec}: cannot import module {module_name!r} ({exc}). Put the directory that "
                f"contains {top}/ or {top}.py on sys.path, e.g. PYTHONPATH=<that dir>, or pip-install "
                f"the package (console commands do not search the current directory {os.getcwd()})."
            ) from exc
        raise ModelError(
            f"{spec}: module {module_name!r} was found but it imports {missing!r}, which is not installed"
        ) from exc
    except Exception as exc:  # user code: any error while importing is reported, not hidden
        raise ModelError(f"{spec}: importing module {module_name!r} raised {type(exc).__name__}: {exc}") from exc


def _python(target: str, num_classes: int, kwargs: Mapping[str, object]) -> nn.Module:
    spec = f"python:{target}"
    module_name, sep, attr_path = target.rpartition(":")
    if not sep or not module_name or not attr_path:
        raise ModelError(f"{spec!r} must look like 'python:package.module:callable'")
    obj = _import(module_name, spec)
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise ModelError(
                f"{spec}: {getattr(obj, '__name__', module_name)!r} has no attribute {attr!r}; "
                f"{_suggest(attr, public)}"
            )
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ModelError(f"{spec}: {attr_path!r} is a {type(obj).__name__}, not a callable")
    takes_classes = accepts(obj, "num_classes")
    check_kwargs(obj, spec, kwargs, provided=("num_classes",) if takes_classes else ())
    model = obj(num_classes=num_classes, **kwargs) if takes_classes else obj(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model
