"""One way to run a model for measuring: eval mode, no autograd, and the caller's train/eval state put back
afterwards, so measuring a model in the middle of training never changes how it trains."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

Forward = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """`model(inputs)`; text tasks pass their own forward to unpack dicts of tensors."""
    return model(inputs)


def resolve_forward(forward: Forward | None) -> Forward:
    return default_forward if forward is None else forward


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode + `torch.inference_mode()`; restores every submodule's own training flag on exit.

    Flags are restored per submodule (not just `model.train(was_training)`) because training code often keeps
    some parts, such as frozen BatchNorm layers, in eval mode while the rest trains.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        for m, training in modes:
            m.training = training
