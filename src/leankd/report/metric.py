"""The primary metric a report judges by: the task's own, or the one a recipe names (`data.text.metric`, or a
`search.objectives` quality figure). Only measured: it enters no stage fingerprint."""
from __future__ import annotations

from ..recipe import Recipe
from ..errors import RecipeError
from ..tasks.base import Task


# how the report names a text metric chosen by `data.text.metric` (recipe.TEXT_METRICS; all higher-is-better)
TEXT_METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC", "f1_positive": "F1 of class 1",
                      "pearson": "Pearson r", "spearman": "Spearman rho"}


def task_primary(task: Task) -> dict:
    """The task's primary metric as its report will state it: a recipe's choice (`apply_named_metric`) if any."""
    return (getattr(task, "info", None) or {}).get("primary_metric") or task.primary_metric()


def apply_named_metric(recipe: Recipe, task: Task) -> None:
    """The primary metric a recipe names for a text task: `data.text.metric` outright; else its first
    `search.objectives` entry on a quality figure (e.g. `{metric: mcc, direction: maximize}` for CoLA), when the
    task's own default is plain accuracy. Either way the KD verdict judges what the user judges; other tasks keep the
    metric they declare. The metric is only measured: it enters no fingerprint (`data_fingerprints`)."""
    info = getattr(task, "info", None) or {}
    if "primary_metric" in info:
        return
    named = getattr(getattr(getattr(recipe, "data", None), "text", None), "metric", None)
    if named is not None:  # recipe validation checked it against data.task
        if named == "f1_positive" and task.num_classes != 2:
            raise RecipeError(f"data.text.metric: f1_positive is the F1 of class 1 of a two-class task, but this data "
                              f"has {task.num_classes} classes: use macro_f1, mcc or accuracy")
        if named != task.primary_metric().get("name"):
            task.info = {**info, "primary_metric": {"name": named, "higher_is_better": True,
                                                    "label": f"{TEXT_METRIC_LABELS.get(named, named)} "
                                                             "(data.text.metric)"}}
        return
    if getattr(recipe, "search", None) is None or task.primary_metric().get("name") != "accuracy":
        return
    from ..search.metrics import resolve

    for obj in recipe.search.objectives:
        path = resolve(obj.metric, "search.objectives")
        if path.startswith("quality.") and path.count(".") == 1:
            name = path.split(".", 1)[1]
            if name != "accuracy":
                task.info = {**info, "primary_metric": {"name": name, "label": f"{obj.metric} (search.objectives)",
                                                             "higher_is_better": obj.direction == "maximize"}}
            return
