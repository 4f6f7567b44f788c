"""Check keyword arguments against a constructor's signature *before* calling it.

A TypeError raised deep inside a constructor names neither the model nor the keys it
would have accepted; checking up front lets the message name both.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, Collection, Mapping

from leankd.errors import ModelError

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C extensions have none
        return None


def accepts(fn: Callable, key: str) -> bool:
    """True if `fn` can take `key` as a keyword (a named parameter or **kwargs)."""
    sig = _signature(fn)
    if sig is None:
        return False
    return any(
        (p.name == key and p.kind in _NAMED) or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in sig.parameters.values()
    )


def _none_besides(provided: Collection[str]) -> str:
    return f"(none besides {', '.join(provided)})" if provided else "(none)"


def check_kwargs(fn: Callable, label: str, given: Mapping[str, object], provided: Collection[str] = ()) -> None:
    """Raise ModelError if `given` has a key `fn` does not take, or `fn` needs a key nobody passes.

    `provided` are keywords the caller adds itself (e.g. num_classes); they are not offered
    to the user as accepted keys.
    """
    sig = _signature(fn)
    if sig is None:
        return
    params = sig.parameters.values()
    named = [p.name for p in params if p.kind in _NAMED]
    accepted = [n for n in named if n not in provided]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        for key in given:
            if key not in named:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ModelError(
                    f"{label} does not accept keyword {key!r}{hint}; "
                    f"accepted keywords: {', '.join(accepted) or _none_besides(provided)}"
                )
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind is not inspect.Parameter.VAR_POSITIONAL
        and p.kind is not inspect.Parameter.VAR_KEYWORD
        and p.name not in given
        and p.name not in provided
    ]
    if required:
        raise ModelError(
            f"{label} needs keyword(s) {', '.join(map(repr, required))} that have no default; "
            f"pass them as model keyword arguments"
        )
