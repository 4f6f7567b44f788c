"""Model names -> constructors, so a recipe can name a network by a string.

Registered functions (timm-style), not subclasses: a constructor is a plain function taking
`num_classes` plus its family's knobs as explicit keywords, so a misspelled knob is caught
before anything is built. Names with a prefix (`torchvision:`, `timm:`, `python:`) are
resolved by `leankd.models.hub` instead.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, TypeVar

from torch import nn

from leankd.errors import ModelError
import leankd.models.hub as hub  # the module, not the package: the package imports us
from leankd.models._kwargs import check_kwargs
from leankd.models.weights import infer_num_classes, load_weights

__all__ = ["register_model", "list_models", "create_model", "model_accepts", "load_weights", "infer_num_classes"]

Constructor = TypeVar("Constructor", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def _origin(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def register_model(fn: Constructor) -> Constructor:
    """Register `fn` under `fn.__name__`; a name is registered once, never silently replaced."""
    name = fn.__name__
    if ":" in name:
        raise ValueError(f"model name {name!r} contains ':', which is reserved for hub prefixes")
    params = inspect.signature(fn).parameters
    if "num_classes" not in params:
        raise TypeError(f"{_origin(fn)} must take a `num_classes` keyword to be registered")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise TypeError(
            f"{_origin(fn)} takes **kwargs, which would swallow misspelled keys; "
            f"list its keywords explicitly to register it"
        )
    existing = _MODELS.get(name)
    if existing is not None and existing is not fn:
        raise ValueError(
            f"model name {name!r} is already registered by {_origin(existing)} "
            f"(module {existing.__module__}); {_origin(fn)} (module {fn.__module__}) "
            f"tries to register it again. Rename one of them."
        )
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted (hub models are not listed)."""
    return sorted(_MODELS)


def _check_num_classes(name: str, num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes for model {name!r} must be a positive integer, got {num_classes!r}")


def _unknown(name: str) -> ModelError:
    close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.6)
    if close:
        known = f"did you mean {', '.join(close)}?"
    else:
        known = f"registered models: {', '.join(list_models())}."
    return ModelError(
        f"unknown model {name!r}; {known} Besides registered names, leankd supports "
        f"'torchvision:<name>', 'timm:<name>' and 'python:module:callable'."
    )


def model_accepts(name: str, keyword: str) -> bool:
    """Whether registered model `name` takes `keyword` (hub models: unknown, so False). Lets a task hand defaults
    such as `n_mels` to the models that need them without the recipe repeating them."""
    fn = _MODELS.get(name)
    return fn is not None and keyword in inspect.signature(fn).parameters


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build model `name` with a `num_classes`-way head; `kwargs` are checked against its signature."""
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string such as 'resnet20' or 'timm:resnet18', got {name!r}")
    _check_num_classes(name, num_classes)
    if hub.is_hub_name(name):
        return hub.create_hub_model(name, num_classes, kwargs)
    if ":" in name:
        prefix = name.split(":", 1)[0]
        raise ModelError(
            f"model {name!r} has unknown prefix {prefix + ':'!r}; supported prefixes: "
            f"{', '.join(hub.PREFIXES)} (e.g. 'timm:resnet18', 'python:my_pkg.models:build')"
        )
    fn = _MODELS.get(name)
    if fn is None:
        raise _unknown(name)
    check_kwargs(fn, f"model {name!r}", kwargs, provided=("num_classes",))
    return fn(num_classes=num_classes, **kwargs)
