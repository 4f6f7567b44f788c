"""The task contract and the batch it yields, plus the one evaluation of a model on a task's split.

Everything modality-specific lives behind `Task`, so the training loop, the measurements and the report never
branch on images vs audio vs text. A task yields `Batch`es already on the training device (augmented for
training), runs a model on a batch's inputs, and turns logits into metrics. The concrete tasks (`TensorTask`,
`LoaderTask`, image, audio, text, seq2seq) live in `leankd.tasks`; this module holds only what every layer
shares, so that `kd`, `train`, `measure` and `tasks` can all import it and it imports none of them.

`evaluate` lives here (not in the training loop) because `Task.quality` needs it: the loop imports the task
contract, so the contract must not import the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import LeanKDError
from ..measure.quality import classification_metrics


@dataclass
class Batch:
    inputs: Any  # a tensor, or a dict of tensors for tasks whose models take several inputs
    targets: Tensor
    index: Optional[Tensor] = None  # positions in the split (lets a cache find the teacher's outputs)
    count: Optional[int] = None  # examples in the batch when targets are not one per example (seq2seq: tokens)

    @property
    def size(self) -> int:
        return self.count if self.count is not None else int(self.targets.shape[0])


def _rows(inputs: Any, rows: slice) -> Any:
    return {k: _rows(v, rows) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[rows]


class Task:
    """Base class: subclasses fill the data and may override `forward` / `metrics`."""

    kind: str = "classification"
    regression: bool = False  # one float output per example (text_regression) instead of class logits
    eval_split: str = "test"  # the split the final report is measured on
    notes: list[str] = []
    num_classes: int
    class_names: list[str]
    device: torch.device

    # data ----------------------------------------------------------------------------------------------
    supports_views: bool = False  # whether train_batches can replay a fixed augmentation view (teacher cache)
    max_views: Optional[int] = None  # distinct views there are (1: the task does not augment, e.g. text)
    VIEW_CHUNK: Optional[int] = None  # views augmented in chunks of this many samples (part of a cache's identity)

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Shuffled, augmented training batches of one epoch. `view=v` replays augmentation view v instead of a
        fresh draw: the same augmented input for every sample whenever v comes back, whatever the batch order —
        what a cached teacher's logits were computed on."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """Every training sample once, under augmentation view `view`, each batch with its `index`: what the teacher
        cache labels (tasks with `supports_views`)."""
        raise NotImplementedError

    def cache_size(self) -> int:
        """Rows a teacher cache of the training split holds: one per example by default (seq2seq: one per target
        token, since word-level KD needs the teacher's distribution at every position)."""
        return self.split_size("train")

    def cache_rows(self, index: Tensor) -> Tensor:
        """The cache rows of training examples `index`, in the order `forward` returns their logits."""
        return index

    def shard_batch(self, batch: Batch, part: int, parts: int) -> Batch:
        """Part `part` of `parts` contiguous shares of `batch`: one rank's share of a global batch under torchrun, or
        one micro-batch of `train.accumulate`. Rows of the inputs (a tensor or a dict of tensors), targets and index
        are cut together; a task whose targets are not one row per example (seq2seq: one per target token) cuts by
        example and overrides this. Losses are means over target rows, so the loop weighs each share by its
        number of target rows."""
        from .dist import shard_bounds

        if parts == 1:
            return batch
        start, end = shard_bounds(int(batch.targets.shape[0]), part, parts)
        rows = slice(start, end)
        return Batch(_rows(batch.inputs, rows), batch.targets[rows],
                     None if batch.index is None else batch.index[rows])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches only (fixed shapes, no tiny noisy last step); one step when the split is smaller."""
        n = self.split_size("train")
        return max(1, n // batch_size) if n >= batch_size else 1

    def split_size(self, split: str) -> int:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        return self.split_size(split) > 0

    def train_tensors(self) -> Optional[list[Tensor]]:
        """The training split as tensors (inputs, targets), or None when it is not held that way (texts, sequence
        pairs, a stream): `leankd.distill(teacher_cache_views=...)` has no recipe to fingerprint, so its teacher
        cache is keyed by these tensors' bytes, and a task without them cannot have one."""
        return None

    def example_inputs(self, batch_size: int) -> Any:
        """A batch of evaluation inputs for profiling (FLOPs, latency), repeated if the split is small."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "num_classes": self.num_classes if self.class_names else None,  # no class names: logits are not classes
            "classes": list(self.class_names),
            "train_size": self.split_size("train"),
            "val_size": self.split_size("val"),
            "eval_split": self.eval_split,
            "eval_size": self.split_size(self.eval_split),
            "primary_metric": self.primary_metric(),
            **getattr(self, "info", {}),
        }

    deploy_info: dict = {}  # set by a task's builder: what an exported model's user needs beyond the classes

    def deploy_metadata(self, model: nn.Module) -> dict[str, Any]:
        """What a user of an exported `model` needs to feed it and read its output, stored in the ONNX file
        (compress/onnx_metadata.py): the task kind, the class names in output order, and what the task's builder
        knows (`deploy_info`: an image task's normalization, size and layout). Tasks whose models differ in their
        inputs (text: each model's tokenizer) override it."""
        meta: dict[str, Any] = {"task_kind": self.kind}
        if self.class_names:
            meta["class_names"] = list(self.class_names)
        return {**meta, **self.deploy_info}

    # what a batch's `size` counts per example of `batch_size` (a causal LM's blocks: their tokens)
    samples_per_example: int = 1

    def summary(self) -> str:
        """The run log's line about the data (after its source)."""
        return (f"{self.split_size('train')} train / {self.split_size('val')} val / "
                f"{self.split_size(self.eval_split)} {self.eval_split}, {self.num_classes} classes")

    def primary_metric(self) -> dict:
        """The quality figure this task is judged by (`{name, higher_is_better, label}`, `name` a key of the report's
        quality block): the KD verdict and the primary ratios read it from the report, so the report never has to
        know which modality it describes. Default: accuracy (Pearson r for regression)."""
        if self.regression:
            return {"name": "pearson", "higher_is_better": True, "label": "Pearson r"}
        return {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}

    @property
    def probe_classes(self) -> bool:
        """Whether the labels are classes a linear probe can be scored on: what `pairs: auto` ranks teacher layers by
        (a regression's scores are not)."""
        return not self.regression

    # model -------------------------------------------------------------------------------------------------
    def model_defaults(self) -> dict:
        """Keyword arguments the data implies for models that accept them (e.g. `n_mels`); the recipe's own
        `kwargs` win."""
        return {}

    def quality(self, model, split: str, cpu: bool = False) -> dict:
        """The report's quality block for `model` on `split`; `cpu`: run on the CPU in fp32 (deployment artifacts).
        Default: the metrics of the logits; a task whose outputs must be decoded first (seq2seq) overrides it."""
        return evaluate(model, CpuView(self) if cpu else self, split)

    def joint_measurements(self, models: dict) -> dict[str, dict]:
        """Task-specific measurements timed across every model and artifact at once (role -> block to merge into
        its entry), e.g. seq2seq decoding latency, interleaved; default none."""
        return {}

    def extra_measurements(self, model: nn.Module) -> dict:
        """Task-specific measurements that join a model's report block (e.g. streaming latency)."""
        return {}

    def with_train_subset(self, n: int, seed: int) -> "Task":
        """A copy whose training split is a stratified subset of `n` examples (`teacher.limit_train`)."""
        raise LeanKDError(f"teacher.limit_train needs the training data in memory; {type(self).__name__} streams it: "
                          "drop teacher.limit_train or use data.limit_train (which limits every stage)")

    def prepare_model(self, model: nn.Module) -> None:
        """Get the data ready for `model` before it trains or is measured (text: tokenize the way it reads)."""

    def model_inputs(self, model: nn.Module, inputs: Any) -> Any:
        """What `model` takes from a batch's inputs (text: one of several tokenizations); default: all of it."""
        return inputs

    def same_inputs(self, a: nn.Module, b: nn.Module) -> bool:
        """Whether two models read the same input positions (what layer and attention losses compare)."""
        return True

    def save(self, run_dir) -> None:
        """Write what a deployed model needs besides its weights into the run directory (text: a word vocabulary)."""

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        return model(inputs)

    def running_metrics(self, split: str) -> Optional[Any]:
        """An accumulator (`add(logits, targets)`, `result() -> metrics`) that `evaluate` feeds batch by batch, for a
        task whose whole-split logits are too large to hold (a causal LM: tokens x vocabulary); None (the default):
        `evaluate` concatenates the logits and calls `metrics` once."""
        return None

    def dynamic_dims(self) -> dict[int, str]:
        """Input dimensions that vary between batches (ONNX export declares them dynamic)."""
        return {0: "batch"}

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        return classification_metrics(logits, targets, self.class_names)

    def score_batch(self, logits: Tensor, targets: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """The training loop's running score of one batch, as tensors (no device sync): (correct, counted). Default:
        argmax accuracy over targets >= 0 (an augmented text carries no label). None: the task has no per-batch
        score (a regression), and the history shows none."""
        return (logits.argmax(-1) == targets).sum(), (targets >= 0).sum()

    def history_metrics(self) -> tuple[str, ...]:
        """Keys of `metrics` the per-epoch history records besides loss, accuracy and macro-F1 (as `val_<key>`)."""
        return ()


class CpuView:
    """A view of a task whose evaluation batches are moved to the CPU in fp32 (deployment artifacts run there)."""

    def __init__(self, task: Task):
        self.task = task

    def eval_batches(self, split: str, batch_size: int):
        from ..measure.devices import to_device

        for batch in self.task.eval_batches(split, batch_size):
            batch.inputs = to_device(batch.inputs, "cpu", torch.float32)
            batch.targets = batch.targets.cpu()
            yield batch

    def forward(self, model, inputs):
        return self.task.forward(model, inputs)

    def metrics(self, logits, targets):
        return self.task.metrics(logits, targets)

    def running_metrics(self, split: str):
        running = getattr(self.task, "running_metrics", None)
        return running(split) if running is not None else None


@torch.no_grad()
def predict(model: nn.Module, task: Task, split: str, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32, CPU) and targets of a whole split, model in eval mode; restores the model's mode."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    try:
        for batch in task.eval_batches(split, batch_size):
            logits.append(task.forward(model, batch.inputs).float().cpu())
            targets.append(batch.targets.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def evaluate(model: nn.Module, task: Task, split: str, batch_size: int = 256) -> dict:
    """The task's metrics of `model`'s logits on `split`: from the whole split's logits, or batch by batch when the
    task accumulates its metrics (`running_metrics`: a causal LM's [tokens, vocabulary] logits would not fit)."""
    running = getattr(task, "running_metrics", None)  # duck-typed tasks (wrappers, tests) may not have it
    running = running(split) if running is not None else None
    if running is None:
        logits, targets = predict(model, task, split, batch_size)
        return task.metrics(logits, targets)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in task.eval_batches(split, batch_size):
                running.add(task.forward(model, batch.inputs), batch.targets)
    finally:
        model.train(was_training)
    return running.result()


__all__ = ["Batch", "Task", "CpuView", "predict", "evaluate"]
