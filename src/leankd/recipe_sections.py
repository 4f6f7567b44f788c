"""Recipe sections that belong to a task kind (`data.audio`, `data.text`, `distill.seq`, ...), validated with the
model the owning kind declares (`TaskKind.data_sections` / `distill_sections`, issue 24).

Why the models are looked up when a recipe is validated, not typed into the recipe's fields: they live with their
plug-ins (leankd/tasks/kinds/), whose package imports the recipe, so the recipe cannot import them when it is
defined; and a kind registered later (a test, a user's package) must bring its own section without an edit here.
A section's errors keep their place (`data.audio.keyword = True: ...`) and a typo in one lists that section's keys.

The sections the built-in kinds had before they were plug-ins stay fields of the recipe (typed loosely, validated
here): every dumped recipe and every run fingerprint carries them, `null` for another task, in their old places,
so those stay byte-identical. A section of any other kind is an extra key of the recipe, carried only when given
(or filled for its own kind), so registering a kind changes no other recipe's fingerprint.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional, get_args

from pydantic import ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ErrorType

from .core.params import Strict
from .core.taskkind import section_model, section_names

_KNOWN_ERRORS = set(get_args(ErrorType))


class WithSections(Strict):
    """A recipe section (`data`, `distill`) whose keys may include the task kinds' own sections (`sections_of`
    says which: "data" reads `TaskKind.data_sections`). Keys that are neither a field nor a registered section are
    refused as unknown, as everywhere in the recipe (extra="allow" only lets the registered sections through)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    sections_of: ClassVar[str] = "data"

    @classmethod
    def section_model(cls, name: str) -> Optional[type]:
        return section_model(name, cls.sections_of)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The keys valid here: the fields, then the sections of registered kinds that are not fields."""
        return [*cls.model_fields, *(s for s in section_names(cls.sections_of) if s not in cls.model_fields)]

    def section(self, name: str) -> Any:
        """The validated `name` section, None when unset (a field or an extra key alike)."""
        return getattr(self, name, None)

    def set_section(self, name: str, value: Any) -> None:
        """Fill a section after validation (defaults for the recipe's own kind); not `self.x =`, which
        validate_assignment would send through the validators again."""
        if name in type(self).model_fields:
            object.__setattr__(self, name, value)
            self.__pydantic_fields_set__.add(name)
        else:
            self.__pydantic_extra__[name] = value

    def __setattr__(self, name: str, value: Any) -> None:
        """Assignment is validated as the rest of the recipe is (validate_assignment): a section with its kind's
        model, and a name that is neither a field nor a section is refused, not kept as an extra."""
        model = None if name.startswith("_") else self.section_model(name)
        if model is not None and value is not None:
            try:
                value = model.model_validate(value)
            except ValidationError as e:
                raise ValidationError.from_exception_data(type(self).__name__, relocated(e, (name,))) from None
        elif model is None and name not in type(self).model_fields and not name.startswith("_"):
            raise ValidationError.from_exception_data(type(self).__name__, [
                {"type": "no_such_attribute", "loc": (name,), "input": value, "ctx": {"attribute": name}}])
        super().__setattr__(name, value)

    def check_sections(self) -> None:
        """Rules on the sections once they are in place (the data section fills its kind's and refuses others')."""

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data: Any, handler: Any) -> Any:
        """Validate each registered section with its kind's model and the rest with the fields, reporting every
        problem of both at once (in field order, the sections after the other fields, unknown keys last)."""
        if not isinstance(data, dict):
            return handler(data)
        given = dict(data)
        sections, section_errors, unknown = {}, [], []
        for key in list(given):
            model = cls.section_model(key)
            if model is None:
                if key not in cls.model_fields:
                    unknown.append({"type": "extra_forbidden", "loc": (key,), "input": given.pop(key)})
                continue
            if given[key] is None:
                if key not in cls.model_fields:
                    given.pop(key)  # an unset section of a later kind is not carried (nor fingerprinted)
                continue
            value = given.pop(key)
            try:
                sections[key] = model.model_validate(value)
            except ValidationError as e:
                section_errors += relocated(e, (key,))
        try:
            out = handler(given)
        except ValidationError as e:
            raise ValidationError.from_exception_data(cls.__name__, relocated(e, ()) + section_errors + unknown) \
                from None
        if section_errors or unknown:
            raise ValidationError.from_exception_data(cls.__name__, section_errors + unknown)
        for key, value in sections.items():
            out.set_section(key, value)
        out.check_sections()
        return out


def relocated(e: ValidationError, prefix: tuple) -> list[dict]:
    """`e`'s errors as error details placed under `prefix`, to re-raise inside an enclosing model's validation (the
    enclosing model adds its own place in front). An error type pydantic does not know (a plug-in's own
    PydanticCustomError) keeps its message."""
    out = []
    for err in e.errors():
        kind = err["type"] if err["type"] in _KNOWN_ERRORS else PydanticCustomError(err["type"], err["msg"])
        detail = {"type": kind, "loc": (*prefix, *err["loc"]), "input": err["input"]}
        if "ctx" in err and isinstance(kind, str):
            detail["ctx"] = err["ctx"]
        out.append(detail)
    return out


__all__ = ["WithSections", "relocated"]
