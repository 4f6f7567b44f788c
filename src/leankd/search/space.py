"""The search space: Optuna distributions for the dotted recipe paths of `search.space`, and the recipe a trial's
parameters make. Every dimension is checked before anything trains: its path must lead to a recipe field the
trials may change, and its extreme values (each choice, both bounds) must make a valid recipe and a buildable
student — a bad space exits with code 2 and names `search.space.<path>`.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Optional

import optuna

from ..errors import RecipeError
from ..kd.registry import LOGIT_LOSSES, families
from .config import Dimension, SearchConfig

FAMILY = "distill.family"  # pseudo-path: the logit-loss family that distill.alpha / distill.temperature shape
# shared by every trial (trained or loaded once), or not a training setting at all
FORBIDDEN_ROOTS = {"teacher": "the teacher is trained (or loaded) once for every trial",
                   "data": "every trial must see the same data to be comparable",
                   "search": "the search cannot search itself", "name": "not a training setting",
                   "seed": "seeds are the search's own (trials share one; the best are re-run with more)",
                   "output_dir": "not a training setting", "measure": "every trial is measured the same way",
                   "baseline": "the search trains its own same-budget baselines", "device": "not a training setting"}


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def encode_choice(value: Any) -> Any:
    """Optuna's categorical values must be plain scalars: lists and mappings are stored as JSON text."""
    return value if _is_plain(value) else json.dumps(value, sort_keys=True)


def decode_choice(dim: Dimension, stored: Any) -> Any:
    for choice in dim.choices or ():
        if encode_choice(choice) == stored:
            return choice
    raise RecipeError(f"a stored trial value {stored!r} is not among the choices {dim.choices} any more: the "
                      "search space changed since this study started (start a new search directory)")


def distribution(dim: Dimension) -> optuna.distributions.BaseDistribution:
    if dim.choices is not None:
        return optuna.distributions.CategoricalDistribution([encode_choice(c) for c in dim.choices])
    if dim.is_int:
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log,
                                                    step=int(dim.step or 1))
    return optuna.distributions.FloatDistribution(float(dim.low), float(dim.high), log=dim.log,
                                                  step=None if dim.step is None else float(dim.step))


def space_size(space: dict[str, Dimension]) -> Optional[int]:
    """How many distinct settings the space holds, or None when a dimension is continuous (a float range without
    a step): the first rung stops proposing once every setting of a finite space was tried."""
    size = 1
    for dim in space.values():
        dist = distribution(dim)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            size *= (dist.high - dist.low) // dist.step + 1
        elif isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is not None:
            size *= int(round((dist.high - dist.low) / dist.step)) + 1
        else:
            return None
    return size


def _values(dist: optuna.distributions.BaseDistribution) -> list:
    """Every value a finite distribution holds (Optuna's stored form: choices encoded)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    n = int(round((dist.high - dist.low) / dist.step)) + 1
    return [min(dist.high, dist.low + k * dist.step) for k in range(n)]


def setting_key(params: dict[str, Any]) -> str:
    """Optuna parameters as one comparable string (floats to 12 significant digits: a stepped value computed
    twice may differ in its last bit)."""
    return json.dumps({k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in params.items()},
                      sort_keys=True, default=str)


def untried_setting(space: dict[str, Dimension], tried: set[str], seed: int) -> Optional[dict[str, Any]]:
    """A setting of a finite space (Optuna's stored form) whose `setting_key` is not in `tried`, drawn at random
    with `seed`; None when every setting was tried or the space is continuous. What the first rung falls back to
    when the sampler keeps proposing tried settings (TPE on a small categorical space converges on its best)."""
    import itertools
    import random

    size = space_size(space)
    if size is None:
        return None
    rng = random.Random(seed)
    dists = {path: distribution(dim) for path, dim in space.items()}
    if size <= 100_000:
        left = [dict(zip(dists, combo)) for combo in itertools.product(*(_values(d) for d in dists.values()))]
        left = [c for c in left if setting_key(c) not in tried]
        return rng.choice(left) if left else None
    for _ in range(1000):  # a huge space: a random draw is almost surely new
        combo = {path: rng.choice(_values(d)) for path, d in dists.items()}
        if setting_key(combo) not in tried:
            return combo
    return None


def suggest(trial: optuna.Trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's value of every dimension (choices decoded back to their YAML values)."""
    params = {}
    for path, dim in space.items():
        dist = distribution(dim)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[path] = decode_choice(dim, trial.suggest_categorical(path, dist.choices))
        elif isinstance(dist, optuna.distributions.IntDistribution):
            params[path] = trial.suggest_int(path, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[path] = trial.suggest_float(path, dist.low, dist.high, step=dist.step, log=dist.log)
    return params


def set_path(raw: dict, path: str, value: Any, where: str = "search.space") -> None:
    """raw[a][b][0][c] = value for path "a.b.0.c"; missing mappings are created, list indices must exist."""
    parts = path.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{where}.{path}: {'.'.join(parts[:i])} has {len(node)} entries, so there is no "
                                  f"entry {part!r}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"{where}.{path}: {'.'.join(parts[:i]) or 'the recipe'} is not a section")
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"{where}.{path}: the list has {len(node)} entries, so there is no entry {last!r}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"{where}.{path}: {'.'.join(parts[:-1])} is not a section")


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """The recipe (as a dict) of a trial: `base` with every parameter set; `distill.family` turns alpha and
    temperature into an explicit loss of that family (alpha x family + (1 - alpha) x cross-entropy)."""
    raw = copy.deepcopy(base)
    raw.pop("search", None)
    for path, value in params.items():
        if path != FAMILY:
            set_path(raw, path, value)
    family = params.get(FAMILY)
    if family is not None:
        distill = raw.setdefault("distill", {})
        alpha, temperature = distill.get("alpha", 0.9), distill.get("temperature", 4.0)
        term = {"kind": family, "weight": alpha}
        if family in LOGIT_LOSSES and LOGIT_LOSSES.get(family).takes("temperature"):
            term["temperature"] = temperature
        distill["loss"] = [term] + ([{"kind": "ce", "weight": round(1 - alpha, 10)}] if alpha < 1 else [])
    return raw


def check_space(recipe, search: SearchConfig) -> None:
    """Every dimension's path is one a trial may change, and its extreme values make a valid recipe and student."""
    import torch
    from pydantic import ValidationError

    from ..errors import ModelError
    from ..models.registry import create_model, list_models
    from ..recipe import Recipe, format_validation_error

    if not search.space:
        raise RecipeError("search.space is empty: name at least one recipe setting to vary, e.g. "
                          "distill.temperature: {low: 1, high: 8}")
    base = recipe.model_dump(exclude={"search"}, exclude_none=True)
    for path, dim in search.space.items():
        where = f"search.space.{path}"
        root = path.split(".")[0]
        if root in FORBIDDEN_ROOTS:
            raise RecipeError(f"{where}: {root} cannot be searched ({FORBIDDEN_ROOTS[root]}); search student, "
                              "train, distill or compress settings")
        if path == FAMILY:
            bad = [c for c in dim.choices or [None] if c not in families()]
            if dim.choices is None or bad:
                raise RecipeError(f"{where}: choices must be loss kinds that learn from the teacher, among "
                                  f"{families()} (got {bad[0]!r})")
            continue
        values = dim.choices if dim.choices is not None else [dim.low, dim.high]
        for value in values:
            raw = apply_params(base, {path: value})
            try:
                trial_recipe = Recipe.model_validate(raw)
            except ValidationError as e:
                raise RecipeError(format_validation_error(e, f"{where} = {value!r} makes a recipe that") +
                                  "\n(fix the range or choices)") from None
            if get_path(trial_recipe.model_dump(), path) is MISSING and not path.startswith("student.kwargs."):
                raise RecipeError(f"{where}: the recipe has no setting {path}")
            name = trial_recipe.student.model
            if path.startswith("student.") and name in list_models():  # hub models would load files: not here
                try:
                    with torch.device("meta"):  # shapes only: no memory, no time
                        create_model(name, num_classes=2, **trial_recipe.student.kwargs)
                except (ModelError, TypeError, ValueError) as e:
                    raise RecipeError(f"{where} = {value!r}: the student cannot be built: {e}") from None


MISSING = object()


def get_path(raw: Any, path: str) -> Any:
    """raw[a][b][0][c] for path "a.b.0.c", or MISSING."""
    node = raw
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node
