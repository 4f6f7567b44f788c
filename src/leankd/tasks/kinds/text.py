"""text_classification and text_regression: labelled texts (data.text), a tokenizer, optional new texts for
distillation (distill.augment)."""
from __future__ import annotations

from pathlib import Path

from ...core.taskkind import TASK_KINDS, TaskKind, register_kind
from .text_config import TextAugmentConfig, TextConfig, text_metric_choices


def build_classification(cfg, device, seed: int, channels_last: bool):
    from ..text import build_text_task

    return build_text_task(cfg, device, seed, channels_last=channels_last)


def build_regression(cfg, device, seed: int, channels_last: bool):
    from ..text import build_text_task

    return build_text_task(cfg, device, seed, channels_last=channels_last, regression=True)


def model_defaults(cfg) -> dict:
    return {"vocab_size": 1000}


def check_data(cfg) -> None:
    metric = cfg.text.metric if cfg.text is not None else None
    if metric is not None and metric not in TASK_KINDS.get(cfg.task).metric_choices:
        raise ValueError(f"data.text.metric {metric!r} is not computed by data.task {cfg.task}; allowed: "
                         f"{text_metric_choices()}")


def check_tokenizer(recipe) -> None:
    """The teacher's own tokenizer unless the recipe names one (written into the resolved recipe, so a recipe that
    names the teacher's folder and one that leaves it out are the same run)."""
    text = recipe.data.text
    if text.tokenizer is None:
        if not recipe.teacher.model.startswith("hf:"):
            raise ValueError("data.text.tokenizer: the teacher is not a Hugging Face checkpoint (hf:...), so name "
                             "the tokenizer's folder")
        object.__setattr__(text, "tokenizer", recipe.teacher.model[3:])  # validate_assignment would recurse


def check_regression(recipe) -> None:
    """One float output: no class distributions to compare, no logits to transform, no classes to probe."""
    check_tokenizer(recipe)
    from ...kd.registry import RAW, distribution_kinds

    bad = distribution_kinds(recipe.distill.loss or [])
    if bad:
        raise ValueError(f"distill.loss: {bad[0]} compares class distributions, but a text_regression task has "
                         "one output: use mse (to the teacher's output) and ce (the squared error to the label)")
    if recipe.distill.transform != RAW:
        raise ValueError(f"distill.transform: {recipe.distill.transform} changes class logits before a softmax, "
                         "but a text_regression task has one output: remove it")
    if any(t.pairs == "auto" for t in recipe.distill.features):
        raise ValueError("distill.features pairs: auto scores teacher layers with a classification probe, which "
                         "a regression task has no classes for: name the pairs")


def check_source(cfg) -> list[str]:
    """A folder of table files must hold a training file (`leankd validate`)."""
    from ...data.tables import find_split_files
    from ...validate import missing_source

    missing = missing_source(str(cfg.source))
    if not missing:
        find_split_files(Path(str(cfg.source)).expanduser())  # no train file: an error
    return missing


_TEXT = dict(model_defaults=model_defaults, check_data=check_data, check_source=check_source,
             data_sections={"text": TextConfig}, distill_sections={"augment": TextAugmentConfig})
CLASSIFICATION = register_kind(TaskKind(
    "text_classification", build_classification, check=check_tokenizer,
    metric_choices=("accuracy", "macro_f1", "mcc", "f1_positive"),
    summary="labelled texts (data.text); accuracy, macro-F1, MCC", **_TEXT))
REGRESSION = register_kind(TaskKind(
    "text_regression", build_regression, check=check_regression, metric_choices=("pearson", "spearman"),
    summary="texts with a score (data.text); Pearson and Spearman r", **_TEXT))
