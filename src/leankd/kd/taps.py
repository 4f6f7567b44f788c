"""Feature taps: read the outputs of named modules with forward hooks — no model rewriting.

A tap is a module path as `model.named_modules()` spells it (`layer2`, `layer2.3.conv2`,
`bert.encoder.layer.3.attention.self`). The same names work for registry, torchvision, timm and Hugging Face
models; for a `torch.compile`d model the hooks go on the original module (`_orig_mod`). Hook a compiled model
BEFORE its first call (the training loop does): dynamo does not guard on hooks, so hooks added to an already
compiled-and-run model are silently skipped until `torch._dynamo.reset()`. What a tap holds is the module's raw output (a tensor, or the tuple a Hugging
Face attention module returns); losses pick what they need from it (`first_tensor`, or index 1 for attention
probabilities).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, Optional

from torch import Tensor, nn

from ..errors import LeanKDError


class TapError(LeanKDError):
    """A tap names a module the model does not have."""


def _plain(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def module_names(model: nn.Module) -> list[str]:
    """Every tappable module path of `model` (the root itself, '', excluded)."""
    return [name for name, _ in _plain(model).named_modules() if name]


def resolve_module(model: nn.Module, name: str, who: str = "model") -> nn.Module:
    """The module at `name`, or a TapError that lists the closest names and where to see them all."""
    modules = dict(_plain(model).named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    raise TapError(f"{who} has no module named {name!r}.{hint} Available: {shown}. "
                   "`leankd layers RECIPE` lists candidate layers with their shapes.")


def first_tensor(output: Any) -> Tensor:
    """The representation inside a module's output: the tensor itself, `last_hidden_state` of a Hugging Face
    ModelOutput, or the first tensor of a tuple/list."""
    if isinstance(output, Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise ValueError(f"cannot read a representation from a module output of type {type(output).__name__}: "
                     "expected a Tensor, a tuple/list holding one, or an object with `last_hidden_state`")


def tree_map(fn, x: Any) -> Any:
    """`fn` applied to every tensor inside tuples (named ones too), lists and dicts; anything else as is."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, tuple):
        items = [tree_map(fn, v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, list):
        return [tree_map(fn, v) for v in x]
    if isinstance(x, dict):
        return {k: tree_map(fn, v) for k, v in x.items()}
    return x


class FeatureTaps:
    """Forward hooks on named modules of one model; `features[name]` is that module's output of the last forward.

    Use as a context manager (or call `close()`): the hooks are removed on exit, so the model is exactly as it
    was. `detach=True` stores detached outputs (the frozen teacher, analysis); the student keeps the graph so
    feature losses can train it."""

    def __init__(self, model: nn.Module, names: Iterable[str], *, detach: bool = False, who: str = "model"):
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self.features: dict[str, Any] = {}
        self._handles = []
        self.on_close: list[Callable[[], None]] = []
        for name in self.names:
            module = resolve_module(model, name, who)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args, output):
            self.features[name] = tree_map(Tensor.detach, output) if self.detach else output
        return hook

    def take(self) -> dict[str, Any]:
        """The features of the last forward; the taps are emptied so a stale value can never be read twice."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise TapError(f"tapped modules {missing} did not run in the last forward pass: either the model skipped "
                           "them (tap modules every forward executes), or the model was torch.compile'd and run "
                           "before the taps were added (add taps before the first call, or torch._dynamo.reset())")
        out, self.features = self.features, {}
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self.on_close:  # e.g. give the model back its own attention implementation
            self.on_close.pop()()
        self.features = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def candidate_layers(model: nn.Module, limit: Optional[int] = None) -> list[str]:
    """Default candidates for layer analysis: the blocks of a network — every non-leaf module that sits directly
    inside a Sequential/ModuleList (ResNet blocks, transformer layers, MobileNet inverted residuals) — or, for a
    model without such containers, its top-level children. Recipes can always name layers explicitly."""
    plain = _plain(model)
    names = []
    for parent_name, parent in plain.named_modules():
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            for child_name, child in parent.named_children():
                if any(True for _ in child.children()):
                    names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    # outermost blocks only: a block's own inner Sequential (an inverted residual's conv stack) is not a candidate
    names = [n for n in names if not any(n.startswith(other + ".") for other in names)]
    if not names:
        names = [n for n, _ in plain.named_children()]
    return names[:limit] if limit else names


def use_eager_attention(model: nn.Module) -> Callable[[], None]:
    """Switch every Hugging Face model inside `model` to eager attention, in memory only (no config on disk
    changes), so attention modules return their probabilities — sdpa and flash attention return none. Returns a
    function that gives each model back its own implementation."""
    switched, seen = [], set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(module, "set_attn_implementation") or id(config) in seen:
            continue
        seen.add(id(config))  # a model's sub-models share its config: switch once, at the top
        before = getattr(config, "_attn_implementation", None)
        if before is not None and before != "eager":
            module.set_attn_implementation("eager")
            switched.append((module, before))

    def restore() -> None:
        for module, before in switched:
            module.set_attn_implementation(before)

    return restore
