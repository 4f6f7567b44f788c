"""`Strict`: the base of every recipe section and every plug-in's parameter model.

It lives at the bottom (not in recipe.py) so a plug-in file can declare its own parameters without importing the
recipe, which imports the registries that hold the plug-ins."""
from __future__ import annotations

import codecs
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_numbers_as_text(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML reads an unquoted `3` as a number, also where text is meant (`--set data.audio.keyword=3`, a run
        named 2024): a whole number is taken as its digits. A float is not (YAML turns `1.50` into 1.5 and `1e3`
        into 1000.0, so its text is lost): the message says to quote it. Booleans stay errors (yes/no/on/off)."""
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _wants_text(cls.model_fields[
                info.field_name].annotation):
            return v
        if isinstance(v, int):
            return str(v)
        raise ValueError(f"YAML reads the unquoted {v!r} as a number, but this field is text: quote it as you meant "
                         f"it, e.g. {info.field_name}: '{v}' (on the command line: "
                         f"--set \"...{info.field_name}='{v}'\")")


def _wants_text(annotation: Any) -> bool:
    """str or Optional[str] (not unions that accept numbers themselves, such as a column name or position)."""
    if annotation is str:
        return True
    args = [a for a in get_args(annotation) if a is not type(None)]
    return get_origin(annotation) in (Union, UnionType) and args == [str]




def known_encoding(name: str) -> str:
    """A text encoding Python can decode with, checked when the recipe is read (not when the data is): for the
    encoding settings of the task kinds' data sections (text, seq)."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"{name!r} is not a known text encoding; use e.g. utf-8, latin-1 or cp1252") from None
    return name
