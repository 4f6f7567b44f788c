"""The registry of compression targets, on its own so that the recipe can check target names without importing
the targets' code (which reads the recipe's types): `TARGETS` holds a `Target` per name, filled by the modules of
`leankd.compress.targets` (imported the first time the registry is read)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..core.registry import Registry

Builder = Callable[..., Any]  # build(model, BuildContext) -> BuiltArtifact (types in compress/targets/__init__.py)


@dataclass
class Target:
    """A registered compression target: how it is built and what the rest of leankd needs to know about it."""

    name: str
    build: Builder
    description: str  # one line, for `leankd compress --help` and the docs
    trains: bool = False  # fine-tunes the student with its teacher (needs `ctx.finetune`; `leankd report
    #                       --remeasure` re-times its saved file instead of building it again)
    needs: tuple[str, ...] = ()  # optional packages (import names) it cannot build without
    # a training target's fine-tuning alone, `finetune(model, ctx) -> state`: under torchrun every rank runs it
    # data-parallel, then rank 0 alone builds the artifact with the state in `ctx.trained` (compress/run.py). A
    # training target without it fine-tunes inside `build`, on rank 0 alone
    finetune: Optional[Builder] = None

    def missing(self) -> list[str]:
        """The packages of `needs` that are not installed here."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


TARGETS: Registry[Target] = Registry("compression target", discover="leankd.compress.targets")


def register_target(name: str, *, description: str, trains: bool = False, needs: tuple[str, ...] = (),
                    finetune: Optional[Builder] = None) -> Callable[[Builder], Builder]:
    """Decorator over `build(model, ctx) -> BuiltArtifact`: registers it as the compression target `name`. A second
    target under a taken name is refused (`RegistryError`), naming both."""
    def deco(build: Builder) -> Builder:
        TARGETS.add(name, Target(name, build, description, trains, tuple(needs), finetune),
                    origin=f"{build.__module__}.{build.__qualname__}")
        return build

    return deco


