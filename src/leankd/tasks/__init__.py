"""Task kinds, by name. A new modality registers one builder here (in its own file); the recipe names it in
`data.task`, and nothing in the loop, measurements or report changes."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import RecipeError
from ..recipe import DataConfig
from .base import Batch, LoaderTask, Task, TensorTask

TaskBuilder = Callable[[DataConfig, torch.device, int, bool], Task]


def _image(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> Task:
    from .image import build_image_task

    return build_image_task(cfg, device, seed, channels_last=channels_last)


def _keyword_spotting(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> Task:
    from .kws import build_kws_task

    return build_kws_task(cfg, device, seed, channels_last=channels_last)


def _text(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> Task:
    from .text import build_text_task

    return build_text_task(cfg, device, seed, channels_last=channels_last)


def _text_regression(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> Task:
    from .text import build_text_task

    return build_text_task(cfg, device, seed, channels_last=channels_last, regression=True)


def _seq2seq(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool) -> Task:
    from .seq2seq import build_seq2seq_task

    return build_seq2seq_task(cfg, device, seed, channels_last=channels_last)


TASKS: dict[str, TaskBuilder] = {"image_classification": _image, "keyword_spotting": _keyword_spotting,
                                 "text_classification": _text, "text_regression": _text_regression,
                                 "seq2seq": _seq2seq}


def register_task(name: str, builder: TaskBuilder) -> None:
    if name in TASKS and TASKS[name] is not builder:
        raise ValueError(f"task {name!r} is already registered")
    TASKS[name] = builder


def check_task_name(name: str) -> None:
    if name not in TASKS:
        raise RecipeError(f"data.task = {name!r} is not a known task; known: {', '.join(sorted(TASKS))}")


def placeholder_model_defaults(cfg: DataConfig) -> dict:
    """Stand-ins for the keywords each task hands its models from the data (`Task.model_defaults`): what `leankd
    validate` builds models with before any data is read, so a model that needs one (text_bilstm's vocab_size)
    validates as it runs."""
    if cfg.task == "keyword_spotting":
        return {"n_mels": cfg.audio.n_mels}
    if cfg.task in ("text_classification", "text_regression"):
        return {"vocab_size": 1000}
    if cfg.task == "seq2seq":
        return {"src_vocab": 64}
    return {}


def build_task(cfg: DataConfig, device: torch.device, seed: int, channels_last: bool = False) -> Task:
    check_task_name(cfg.task)
    return TASKS[cfg.task](cfg, device, seed, channels_last)


__all__ = ["Batch", "LoaderTask", "Task", "TensorTask", "TASKS", "build_task", "register_task", "check_task_name",
           "placeholder_model_defaults"]
