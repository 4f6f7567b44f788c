"""Why an ONNX export failed, in one message a user can act on: the failing operator, the module and source line
it came from (dug out of the exporter's exception chain and the torch.fx node it was translating), and which of the
usual causes it is (data-dependent control flow, an operator without ONNX translation, a batch-size-specific shape).
Apart from `onnx_export.py` because reading exporter internals is its own, best-effort job that grows with every
torch release.
"""
from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["describe_export_failure"]


_OP_PATTERNS = [
    re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"Exporting the operator '([^']+)' to ONNX opset version \d+ is not supported"),
    re.compile(r"Unsupported: ONNX export of operator ([\w.:]+)"),
]


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from, following Python's own display rule: the explicit
    `__cause__`, else the implicit `__context__` unless suppressed (`raise ... from None`)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return chain


def _failing_fx_node(chain: list[BaseException]):
    """The torch.fx node the exporter was translating when it failed, found in the traceback frames' locals
    (the ONNX exporter keeps it in a local called `node`). Best effort: None when not found."""
    node_type = getattr(getattr(torch, "fx", None), "Node", None)
    if node_type is None:
        return None
    for exc in chain:
        tb = exc.__traceback__
        while tb is not None:
            try:
                local = tb.tb_frame.f_locals.get("node")
            except Exception:  # noqa: BLE001 - frame introspection is best effort
                local = None
            if isinstance(local, node_type) and local.op == "call_function":
                return local
            tb = tb.tb_next
    return None


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in ([^\n]+)\n\s*([^\n]*)')


def _last_user_frame(text: str) -> str | None:
    """`"file.py:12 (forward): code"` for the last `File "...", line N, in fn` frame of a stack trace text."""
    frames = _FRAME.findall(text)
    if not frames:
        return None
    file, line, fn, code = frames[-1]
    return f"{file}:{line} ({fn.strip()}): {code.strip()}"


def _node_location(node) -> tuple[str | None, str | None]:
    """(`"module.path (ClassName)"`, last user source line) of an fx node from its export metadata."""
    module = source = None
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        qualname, cls = list(stack.values())[-1]
        cls_name = cls.split(".")[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        module = f"{qualname or '<root>'} ({cls_name})"
    trace = node.meta.get("stack_trace")
    if trace:
        source = _last_user_frame(trace)
    return module, source


def _summary_line(text: str, root: BaseException) -> str:
    """One line saying what went wrong: the exporter's own "## Exception summary" entry when present (it names
    the underlying exception), else the innermost exception."""
    m = re.search(r"## Exception summary\s*\n\s*<class '([\w.]+)'>: ([^\n]*)", text)
    if m:
        return f"{m.group(1).split('.')[-1]}: {m.group(2).strip()[:300]}"
    first = str(root).strip().splitlines()
    return f"{type(root).__name__}: {first[0][:300] if first else ''}"


def describe_export_failure(exc: BaseException, model: nn.Module, legacy: bool = False) -> str:
    """The `ExportError` message for `exc` raised while exporting `model` (`legacy`: by the TorchScript exporter):
    where it failed, the likely cause, and what to change."""
    chain = _exception_chain(exc)
    text = "\n".join(str(e) for e in chain)
    root = chain[-1]
    op = module = source = None
    node = _failing_fx_node(chain)
    if node is not None:
        op = str(node.target)
        module, source = _node_location(node)
    if op is None:
        for pattern in _OP_PATTERNS:
            m = pattern.search(text)
            if m:
                op = ".".join(g for g in m.groups() if g)
                break
    if source is None:
        i = text.find("The following call raised this error:")
        if i >= 0:
            source = _last_user_frame(text[i:i + 2000].split("\n\n\n")[0])
    parts = ([f"in module {module}"] if module else []) + ([f"at {source}"] if source else [])
    where = f" [{', '.join(parts)}]" if parts else ""
    summary = _summary_line(text, root)
    name = type(model).__name__
    if legacy:
        what = f"operator {op}" if op else "an operator"
        return (
            f"ONNX export of {name} failed with the legacy exporter: {what} is not supported{where} ({summary}). "
            "Replace that operation with ONNX-supported ones (or compute it outside the model), or export with "
            "the default dynamo exporter (dynamo=True)."
        )
    data_dependent = "GuardOnDataDependentSymNode" in text or "data-dependent" in text
    shape_problem = any(s in text for s in ("Constraints violated", "inferred to be a constant",
                                            "specialized", "inconsistencies were found"))
    # the operator is the culprit only when ONNX translation (step 3) failed, not when torch.export (step 1) did
    missing_op = op is not None and (
        node is not None or "No ONNX function found" in text
        or any(type(e).__name__ in ("ConversionError", "DispatchError") for e in chain)
    )
    if data_dependent:
        return (
            f"ONNX export of {name} failed: data-dependent Python control flow (a Python `if`/loop/int() on a "
            f"tensor's values) cannot be captured by torch.export{where} ({summary}). "
            "Rewrite it with tensor ops (torch.where, masking) or torch.cond, or export with dynamo=False "
            "(the legacy tracer freezes the branch taken by the example inputs - check the result with check_onnx)."
        )
    if missing_op:
        return (
            f"ONNX export of {name} failed: operator {op} has no ONNX translation{where} ({summary}). "
            "Replace that operation with ONNX-supported ones (or compute it outside the exported model), "
            "register a translation via torch.onnx.export(custom_translation_table=...), or try "
            "export_onnx(..., dynamo=False) (the legacy exporter supports a different set of operators)."
        )
    if shape_problem:
        return (
            f"ONNX export of {name} failed: the model's shapes conflict with a dynamic batch dimension{where} "
            f"({summary}). Make the code batch-size agnostic (e.g. `x.flatten(1)` instead of reshaping with a "
            "fixed batch size) or export with dynamic_batch=False."
        )
    culprit = f" near operator {op}" if op else ""
    return (
        f"ONNX export of {name} failed{culprit}{where} ({summary}). Simplify the failing part of the model, or "
        "try export_onnx(..., dynamo=False) for the legacy exporter."
    )
