"""Choosing the layers to distill: capture candidate layers of teacher and student on a few batches, score them
(`kd.layers`: linear CKA, teacher-layer importance, monotonic matching) and turn `pairs: auto` into named pairs.

Used by the pipeline for `distill.features[*].pairs: auto` and by `leankd layers RECIPE`, so the table a user
reads and the pairs a run distills come from the same code.
"""
from __future__ import annotations

import fnmatch
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError, RecipeError
from ..tasks.base import Task, concat_inputs, take_inputs
from .layers import LayerAnalysis, analyze
from .taps import FeatureTaps, TapError, candidate_layers, first_tensor, module_names

MAX_SPATIAL = 8  # conv maps are average-pooled to at most 8x8 before CKA: 27 ResNet-56 blocks x 512 samples fit in RAM


def pick_candidates(model: nn.Module, patterns: Optional[list[str]], who: str) -> list[str]:
    """Module names matching the fnmatch `patterns` (in model order), or the default block-level candidates."""
    if not patterns:
        return candidate_layers(model)
    names = module_names(model)
    picked = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not picked:
        raise TapError(f"no {who} module matches {patterns}; candidate blocks are: {', '.join(candidate_layers(model))}")
    return picked


def _compact(output) -> Tensor:
    """A layer's output as a CPU fp32 tensor small enough to keep for a few hundred samples."""
    x = first_tensor(output).detach().float()
    if x.dim() == 4 and (x.shape[-1] > MAX_SPATIAL or x.shape[-2] > MAX_SPATIAL):
        x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], MAX_SPATIAL), min(x.shape[-1], MAX_SPATIAL)))
    return x.cpu()


@torch.no_grad()
def capture(model: nn.Module, names: list[str], task: Task, batches: int, batch_size: int, who: str, seed: int = 0
            ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Outputs of `names` (compacted), logits and targets on `batches * batch_size` unaugmented training examples.

    The examples are a seeded random sample of the whole training split, not its first batches: sources stored
    class by class would otherwise hand the analysis one or two classes, where every layer "predicts" perfectly
    and CKA compares within-class noise."""
    examples = sample_train_batch(task, batches * batch_size, seed)
    device = next((p.device for p in model.parameters()), task.device)
    was_training = model.training
    model.to(task.device).eval()
    feats: dict[str, list[Tensor]] = {n: [] for n in names}
    logits, targets = [], []
    try:
        with FeatureTaps(model, names, detach=True, who=who) as taps:
            for start in range(0, len(examples.targets), batch_size):
                inputs = slice_inputs(examples.inputs, start, start + batch_size)
                logits.append(task.forward(model, inputs).float().cpu())
                targets.append(examples.targets[start:start + batch_size].cpu())
                for name, out in taps.take().items():
                    feats[name].append(_compact(out))
    finally:
        model.to(device).train(was_training)
    return {n: torch.cat(v) for n, v in feats.items()}, torch.cat(logits), torch.cat(targets)


def sample_train_batch(task: Task, n: int, seed: int):
    """A seeded random sample of `n` training examples (unaugmented), as one Batch on the task's device."""
    from ..tasks.base import Batch

    total = task.split_size("train")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(total, generator=g)[:min(n, total)].sort().values
    if hasattr(task, "batch"):  # text: one batch padded to its longest row (batches of other widths don't stack)
        return task.batch("train", pick.to(task.device))
    inputs, targets = [], []
    for batch in task.eval_batches("train", 512):
        index = batch.index.cpu() if batch.index is not None else None
        if index is None:
            raise ValueError("layer analysis needs a task whose batches carry their indices")
        keep = torch.isin(index, pick)
        if keep.any():
            where = keep.nonzero().squeeze(1).to(batch.targets.device)
            inputs.append(take_inputs(batch.inputs, where))
            targets.append(batch.targets[where])
    return Batch(concat_inputs(inputs), torch.cat(targets))


def slice_inputs(x, start: int, stop: int):
    return {k: slice_inputs(v, start, stop) for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def check_probe(task: Task, where: str) -> None:
    """`pairs: auto` (and `leankd layers`) rank teacher layers by a linear probe of the labels: a task whose labels
    are not classes (`Task.probe_classes`) is refused, before any training, rather than scored on nonsense."""
    if not task.probe_classes:
        raise RecipeError(f"{where}: auto scores teacher layers with a classification probe, which a {task.kind} task "
                          "has no classes for: name the pairs")


def analyze_layers(student: nn.Module, teacher: nn.Module, task: Task, *, student_layers: list[str],
                   teacher_layers: list[str], batches: int = 4, batch_size: int = 128,
                   top_k: Optional[int] = None, seed: int = 0) -> LayerAnalysis:
    """CKA table, teacher-layer importance and the proposed (top-k) matching on a few training batches."""
    check_probe(task, "distill.features[*].pairs")
    s_feats, _, _ = capture(student, student_layers, task, batches, batch_size, "student", seed)
    t_feats, t_logits, targets = capture(teacher, teacher_layers, task, batches, batch_size, "teacher", seed)
    if targets.unique().numel() < 2:
        raise DataError("layer analysis (pairs: auto) needs examples of at least 2 classes; the training split has "
                        "fewer: use more training data, or name the layer pairs")
    return analyze(s_feats, t_feats, targets, t_logits, task.num_classes, top_k=top_k)


def auto_pairs(analysis: LayerAnalysis) -> list[tuple[str, str]]:
    """The selected (student, teacher) module pairs of an analysis, in student order."""
    return [(s, t) for s, t, *_ in analysis.matching]
