"""Recipe validation errors in the words of the recipe: each problem with its place (`data.audio.keyword`), the bad
value and what is allowed; an unknown key lists the keys valid at its place, a task kind's own section included.
Split out of recipe.py by job; `leankd.recipe.format_validation_error` is the entry point callers use."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from .recipe_sections import WithSections


def format_validation_error(e: ValidationError, origin: str, root: type[BaseModel]) -> str:
    """`e`, raised validating `root` (the Recipe), as the lines `leankd validate` and a failed run print."""
    lines = [f"{origin}: {e.error_count()} problem(s) in the recipe:"]
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1], root)
            msg = f"unknown key (typo?); allowed here: {', '.join(allowed)}" if allowed else "unknown key (typo?)"
            lines.append(f"  - {where}: {msg}")
            continue
        if kind == "missing":
            lines.append(f"  - {where}: required field is missing")
            continue
        if not err["loc"] or isinstance(value, dict):
            lines.append(f"  - {where}: {err['msg'].removeprefix('Value error, ')}")
            continue
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = err['msg'].removeprefix('Value error, ')
        if kind == "string_type" and isinstance(value, bool):
            msg += " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the text, e.g. 'yes')"
        lines.append(f"  - {where} = {shown}: {msg}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    """Walk the schema along `loc` to list the keys valid at that place (for typo messages). A task kind's section
    is walked into with the model its kind declares (`WithSections.section_model`)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        section = model.section_model(part) if _has_sections(model) else None
        if section is None:
            field = getattr(model, "model_fields", {}).get(part)
            if field is None:
                return []
            section = _model_of(field.annotation)
        model = section
        if model is None:
            return []
    if _has_sections(model):
        return model.allowed_keys()
    return list(getattr(model, "model_fields", {}).keys())


def _has_sections(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, WithSections)


def _model_of(annotation: Any):
    """The model an annotation holds (`Optional[X]`, `list[X]`, ...), None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
