"""Task kinds, by name. A new modality is one module in `leankd/tasks/kinds/` that registers a `TaskKind` (or, from
outside the package, `register_task(name, builder)`); the recipe names it in `data.task`, and nothing in the loop,
measurements or report changes."""
from __future__ import annotations

from typing import Callable

import torch

from ..core.registry import RegistryError
from ..core.taskkind import TASK_KINDS, TaskKind, register_kind
from ..errors import RecipeError
from ..recipe import DataConfig
from .base import Batch, LoaderTask, Task, TensorTask
from .stream import IterableTask

TaskBuilder = Callable[[DataConfig, torch.device, int, bool], Task]
TASKS = TASK_KINDS  # name -> TaskKind (the registry; `TASKS.remove(name)` unregisters)


def register_task(name: str, builder: TaskBuilder, **kind) -> TaskKind:
    """Register a task kind built by `builder(data_config, device, seed, channels_last)`; `kind` takes the other
    `TaskKind` fields (model_defaults, check, ...). A second builder under a taken name is refused."""
    if name in TASKS and TASKS.get(name).build is not builder:
        raise ValueError(f"task {name!r} is already registered")
    return register_kind(TaskKind(name, builder, **kind))


def check_task_name(name: str) -> None:
    if name not in TASKS:
        raise RecipeError(f"data.task = {name!r}: {TASKS.unknown_message(name)}")


def placeholder_model_defaults(cfg: DataConfig) -> dict:
    """Stand-ins for the keywords each task hands its models from the data (`Task.model_defaults`): what `leankd
    validate` builds models with before any data is read, so a model that needs one (text_bilstm's vocab_size)
    validates as it runs. Each kind declares its own (`TaskKind.model_defaults`)."""
    return TASKS.get(cfg.task).model_defaults(cfg)


def build_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> Task:
    check_task_name(cfg.task)
    return TASKS.get(cfg.task).build(cfg, device, seed, channels_last)


__all__ = ["Batch", "IterableTask", "LoaderTask", "Task", "TensorTask", "TASKS", "TaskKind", "build_task", "register_task",
           "check_task_name", "placeholder_model_defaults", "RegistryError"]
