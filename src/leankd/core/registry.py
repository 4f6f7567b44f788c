"""One `Registry` class for every kind of plug-in: losses, feature losses, logit transforms, compression targets,
task kinds.

Why one class: a name is the contract between a recipe and the code, so every registry must behave the same way.
It refuses a clash (a second plug-in under a taken name is a bug, never a silent override, unlike timm's warning),
suggests close names for a typo, and lists what is allowed in the words error messages and the recipe schema use.
The recipe's allowed values are generated from here, so a kind that is registered is accepted everywhere and a
kind that is not is refused everywhere: no site can fall back to another plug-in.

Registries live in the plug-in's own package (`leankd.kd.registry.LOSSES`, ...); this module imports nothing
from leankd, so anything may import it.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A clash or an unknown name. A `ValueError`, so pydantic validators turn it into a recipe error."""


class Registry(Generic[T]):
    """Name -> plug-in entry. `what` names the kind of plug-in in messages ("loss kind", "compression target").

    `discover` names a package whose modules are imported the first time the registry is read: a plug-in file
    dropped into that package registers itself with no other file edited (mdistiller's one file per method)."""

    def __init__(self, what: str, *, discover: Optional[str] = None):
        self.what = what
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._discover = discover
        self._discovered = discover is None

    # registration ----------------------------------------------------------------------------------------------
    def add(self, name: str, entry: T, origin: Optional[str] = None) -> T:
        """Register `entry` under `name`. The same entry twice (a module imported again) is fine; another entry
        under a taken name is refused, naming both origins."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise RegistryError(f"{self.what} name must be a non-empty string without surrounding spaces, got "
                                f"{name!r}")
        origin = origin or _origin(entry)
        existing = self._entries.get(name)
        if existing is not None and existing is not entry and self._origins.get(name) != origin:
            raise RegistryError(f"{self.what} {name!r} is already registered by {self._origins[name]}; {origin} tries "
                                "to register it again: rename one of them")
        self._entries[name] = entry
        self._origins[name] = origin
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: `@LOSSES.register("dkd")` over a class or function."""
        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry
        return deco

    def remove(self, name: str) -> None:
        """Unregister (tests that register a plug-in of their own clean up with this)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    # lookup ----------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self._discover)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._discover}.{info.name}")

    def names(self) -> list[str]:
        """Sorted: registration order depends on which module happened to be imported first."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())

    def origin(self, name: str) -> str:
        self._load()
        return self._origins[name]

    def get(self, name: str) -> T:
        """The entry, or a `RegistryError` that lists close names (or all of them)."""
        self._load()
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        return self._entries[name]

    __getitem__ = get

    def require(self, name: str, also: tuple[str, ...] = ()) -> str:
        """`name` when it is registered (or one of `also`, names a caller accepts besides the registry's); else a
        `RegistryError` (a ValueError, so a pydantic validator turns it into a recipe error) listing close names."""
        if name not in also and name not in self:
            raise RegistryError(self.unknown_message(name, [*also, *self.names()] if also else None))
        return name

    def unknown_message(self, name: object, allowed: Optional[list[str]] = None) -> str:
        known = allowed if allowed is not None else self.names()
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return f"unknown {self.what} {name!r}: {hint}known: {', '.join(known)}"


def _origin(entry: object) -> str:
    module = getattr(entry, "__module__", None) or type(entry).__module__
    qual = getattr(entry, "__qualname__", None) or type(entry).__qualname__
    return f"{module}.{qual}"
