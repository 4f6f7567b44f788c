"""Deployment targets: each turns the trained fp32 model into an artifact file plus a runnable that looks like a
model (`runnable(inputs) -> fp32 logits`), so the task's own evaluation and the one latency harness measure it
exactly like the fp32 model.

`TARGETS` is the registry of compression targets and the single source of their names: the recipe's
`compress.targets`, `leankd compress --to`, `leankd validate` and the docs all read it. Each module of this package
registers its targets with `@register_target(name, description=...)` over a `build(model, ctx) -> BuiltArtifact`
function; a new module dropped here registers itself (the registry imports every module of the package the first
time it is read). A target that cannot apply to the model, task or context it is given raises `Unsupported` with
the reason; targets that train (`trains=True`: qat, qat-control) take the teacher, loss and schedule from
`ctx.finetune`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from ...core.registry import RegistryError
from ..registry import TARGETS, Builder, Target, register_target  # noqa: F401  (re-exported)
from ...errors import LeanKDError

if TYPE_CHECKING:  # the recipe, losses, tasks and training loop are imported where they are used
    from ...kd.losses import Loss
    from ...recipe import TrainConfig
    from ...tasks.base import Task
    from ...train.loop import FitResult

__all__ = ["TARGETS", "TRAINING_TARGETS", "BuildContext", "BuiltArtifact", "Finetune", "Target", "Unsupported",
           "build_artifact", "calibration", "cpu_inputs", "finetune_target", "max_abs_diff", "register_target",
           "size_note"]


@dataclass
class BuiltArtifact:
    runnable: nn.Module
    path: Path
    format: str  # "torch" | "onnx"
    quantized: Optional[list[str]] = None
    left_in_float: Optional[dict[str, str]] = None
    notes: list[str] = field(default_factory=list)
    training: Optional[FitResult] = None  # targets that fine-tune (qat, qat-control)
    metrics_path: Optional[Path] = None
    params: Optional[int] = None  # set by targets that change the parameter count (vocab-trim); else the base's
    files: Optional[list[Path]] = None  # an artifact of several files (seq2seq ONNX: encoder + decoder step)


@dataclass
class Finetune:
    """What a training target needs: the distillation that made the student, continued for a few epochs."""

    cfg: TrainConfig
    loss: Loss
    teacher: Optional[Any] = None  # a LiveTeacher when the loss needs one
    seed: int = 0
    progress: Optional[Callable[[str], Any]] = None  # name -> progress hook for fit()
    log: Optional[Callable[[str], Any]] = None  # console line (a QAT attempt that diverged is said as it happens)
    # QAT's divergence guard (qat_guard.py; recipe compress.qat): retries at lr/10, then int8-static
    retries: int = 2
    divergence_margin: float = 2.0  # accuracy points below the fake-quantized start
    loss_factor: float = 2.0  # running loss above this x its start


@dataclass
class BuildContext:
    task: Task
    out_dir: Path
    calibration_batches: int = 8
    finetune: Optional[Finetune] = None
    trained: Any = None  # what the target's `finetune` returned, when it ran before `build` (under torchrun)


class Unsupported(LeanKDError):
    """This target does not apply to the model, task or context it was given (vocab-trim on an image model, a
    training target outside a recipe, ...): the message says why and what to use instead. The pipeline reports it
    as the target's failure note; the run keeps its other results."""


def __getattr__(name: str) -> Any:
    # derived from the registry on each read, so a target registered later (a plug-in, a test) is included
    if name == "TRAINING_TARGETS":
        return frozenset(n for n, t in TARGETS.items() if t.trains)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _entry(target: str, finetune: Optional[Finetune]) -> Target:
    try:
        entry = TARGETS.get(target)
    except RegistryError as e:
        raise LeanKDError(str(e)) from None
    if entry.trains and finetune is None:
        raise Unsupported(f"compression target {target} fine-tunes the student with its teacher: it runs from a "
                          f"recipe (`leankd run` / `leankd compress RUN_DIR --to {target}`), which supplies the "
                          "teacher and loss")
    return entry


def _fresh_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)


def build_artifact(target: str, model: nn.Module, task: Task, out_dir: Path, calibration_batches: int = 8,
                   finetune: Optional[Finetune] = None, trained: Any = None) -> BuiltArtifact:
    """Build `target` from a copy of `model`; `trained`: what `finetune_target` returned for it (its fine-tuning
    already done), else a training target fine-tunes here."""
    entry = _entry(target, finetune)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _fresh_copy(model)
    art = entry.build(model, BuildContext(task, out_dir, calibration_batches, finetune, trained))
    if hasattr(model, "input_encoding"):  # which of a text task's tokenizations the artifact reads
        art.runnable.input_encoding = model.input_encoding
    return art


def finetune_target(target: str, model: nn.Module, task: Task, out_dir: Path, calibration_batches: int = 8,
                    finetune: Optional[Finetune] = None) -> Any:
    """The fine-tuning part alone of a training target that has one (`Target.finetune`), on a copy of `model`:
    under torchrun every rank runs it, data-parallel; pass its result to `build_artifact(..., trained=)`. None for a
    target without a separate fine-tuning."""
    entry = _entry(target, finetune)
    if entry.finetune is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return entry.finetune(_fresh_copy(model), BuildContext(task, out_dir, calibration_batches, finetune))


# helpers for the targets' modules ------------------------------------------------------------------------------
def cpu_inputs(task: Task, batch_size: int, model: nn.Module) -> Any:
    """What `model` takes from a batch of typical inputs (text: its own tokenization), on the CPU."""
    from ...measure.devices import to_device

    return to_device(task.model_inputs(model, task.example_inputs(batch_size)), "cpu", torch.float32)


def calibration(task: Task, batches: int, model: nn.Module, batch_size: int = 64) -> list:
    """Un-augmented training batches (never the eval split: calibrating on test data would leak it)."""
    from ...measure.devices import to_device

    return [to_device(task.model_inputs(model, b.inputs), "cpu", torch.float32)
            for b in islice(task.eval_batches("train", batch_size), batches)]


def size_note(path: Path, model: nn.Module) -> str:
    """The saved file against the fp32 tensors it replaces (each shared tensor counted once, as a file stores it)."""
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor)}
    fp32, size = sum(tensors.values()), path.stat().st_size
    return f"file {size:,} bytes against {fp32:,} bytes of fp32 tensors ({fp32 / max(size, 1):.2f}x smaller)"


@torch.no_grad()
def max_abs_diff(reference: nn.Module, artifact: nn.Module, task: Task, forward) -> float:
    """Largest logit difference between the fp32 model and the artifact on one eval batch (64 inputs)."""
    from ...measure.devices import to_device

    inputs = to_device(task.example_inputs(64), "cpu", torch.float32)  # each model takes its own part (text)
    ref = copy.deepcopy(reference).cpu().float().eval()
    return float((forward(ref, inputs).float() - forward(artifact, inputs).float()).abs().max())
