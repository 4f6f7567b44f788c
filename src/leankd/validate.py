"""`leankd validate`: everything about a recipe that can be checked without reading its data or training.

Why a separate pass: `leankd run` only finds some mistakes once the data is read and models are built, and a
recipe is often written on one machine and run on another. Validation must agree with `run`: what run accepts,
validate accepts. So models are built with stand-ins for what the data decides (class count, vocabulary size,
`Task.model_defaults`), and what only the data or this machine's installed packages can settle (a dataset not
here, a weights package not installed, the class count a fine-tuned head expects) is listed as not checked
instead of failing. Definite mistakes (an unknown model, a misspelled keyword, a missing checkpoint file, CUDA
asked for where there is none, a data folder with no training file) are errors, before any run.
"""
from __future__ import annotations

from pathlib import Path

from .errors import LeanKDError, MissingPackageError, ModelError, RecipeError
from .recipe import ModelConfig, Recipe

PLACEHOLDER_CLASSES = 10  # models are built with this head when the data would decide it


def check_recipe(recipe: Recipe) -> list[str]:
    """Raise a LeanKDError for what is definitely wrong; return what could not be checked here (one line each)."""
    from .tasks import check_task_name

    check_task_name(recipe.data.task)
    check_device(recipe.device)
    unchecked: list[str] = []
    check_checkpoints(recipe)
    unchecked += check_models(recipe)
    unchecked += check_data(recipe)
    unchecked += check_compress(recipe)
    return unchecked


def check_device(device: str) -> None:
    """`device: cuda` (or cuda:N, mps) on a machine that has none fails here, not when the run starts."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(f"device = {device!r}, but CUDA is not available on this machine (no GPU, or a "
                              "CPU-only PyTorch): use device: auto (a GPU when there is one) or cpu")
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise RecipeError(f"device = {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}): pick one of them or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("device = 'mps', but Apple's MPS backend is not available on this machine: use device: "
                          "auto or cpu")


def _model_configs(recipe: Recipe) -> list[tuple[str, ModelConfig]]:
    return ([("teacher", recipe.teacher), ("student", recipe.student)]
            + [(f"distill.assistants[{i}]", a) for i, a in enumerate(recipe.distill.assistants)])


def check_checkpoints(recipe: Recipe) -> None:
    for role, cfg in _model_configs(recipe):
        if cfg.checkpoint is None:
            continue
        path = Path(cfg.checkpoint).expanduser()
        if not path.exists():
            raise RecipeError(f"{role}.checkpoint = {cfg.checkpoint!r}: no such file (looked for {path.absolute()}); "
                              "give the path of trained weights (.safetensors or .pt), or remove the line to train "
                              f"the {role} here")
        if not path.is_file():
            raise RecipeError(f"{role}.checkpoint = {cfg.checkpoint!r} is a folder: give the weights file inside it "
                              "(.safetensors or .pt)")


def check_models(recipe: Recipe) -> list[str]:
    """Build each model once with stand-ins for what the data decides: unknown names and bad keywords fail."""
    from .models import create_model
    from .models.hf import HeadMismatchError
    from .models.registry import model_accepts
    from .tasks import placeholder_model_defaults

    defaults = placeholder_model_defaults(recipe.data)
    unchecked = []
    for role, cfg in _model_configs(recipe):
        kwargs = {**{k: v for k, v in defaults.items() if k not in cfg.kwargs and model_accepts(cfg.model, k)},
                  **cfg.kwargs}
        if kwargs.get("layer_strategy") == "auto":  # resolved on the data by the run: check the rest of it here
            if not cfg.model.startswith("hf:"):
                raise RecipeError(f"{role}.kwargs.layer_strategy auto keeps layers of a Hugging Face checkpoint; "
                                  f"{cfg.model} is not one (hf:...)")
            if not isinstance(kwargs.get("layers"), int):
                raise RecipeError(f"{role}.kwargs: layer_strategy auto picks which layers to keep, so give their "
                                  f"number (layers: 3), not {kwargs.get('layers')!r}")
            kwargs["layer_strategy"] = "uniform"
            unchecked.append(f"{role}: which layers layer_strategy auto keeps (decided on the training data)")
        try:
            create_model(cfg.model, num_classes=PLACEHOLDER_CLASSES, **kwargs)
        except MissingPackageError as e:
            unchecked.append(f"{role}.model {cfg.model}: {e}")
        except HeadMismatchError:
            unchecked.append(f"{role}.model {cfg.model}: whether its classification head fits the data's classes "
                             "(known once the data is read)")
        except LeanKDError as e:
            raise ModelError(f"{role}.model: {e}") from None
    return unchecked


def check_data(recipe: Recipe) -> list[str]:
    """The data source exists and (for tables) has a training file; data that is not on this machine is listed as
    not checked, since a recipe may be meant for another one."""
    data = recipe.data
    source = str(data.source)
    if source == "demo" or source.startswith("torchvision:"):
        return []
    from .tasks import TASKS

    own = TASKS.get(data.task).check_source(data)  # the kind's own sources and files (TaskKind.check_source)
    return own if own is not None else missing_source(source)


def missing_source(source: str) -> list[str]:
    """`data.source` as a path: not found here is listed as not checked (the recipe may be meant for another machine)."""
    if not Path(source).expanduser().exists():
        return [f"data.source {source!r}: not found from {Path.cwd()} (the data was not read; `leankd run` needs "
                "it there)"]
    return []


def check_compress(recipe: Recipe) -> list[str]:
    """Each compression target's optional packages (its registry entry's `needs`): one not installed here is listed
    as not checked, like a model's weights package (the recipe may be meant for another machine). The names
    themselves were checked against the registry when the recipe was read."""
    if not recipe.compress.targets:
        return []
    from .compress.targets import TARGETS

    unchecked = []
    for name in recipe.compress.targets:
        missing = TARGETS.get(name).missing()
        if missing:
            unchecked.append(f"compress.targets {name}: needs {', '.join(missing)}, not installed here (pip install "
                             f"{' '.join(missing)})")
    return unchecked
