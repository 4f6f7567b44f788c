"""THE training loop — the same code trains the teacher, the baseline student and the distilled student.

Where time goes, per step: the task hands a batch already on the device (augmented there), the student runs
under autocast, the teacher (if the loss needs one) runs frozen, the loss is computed in fp32, one optimizer
step. Running sums stay on the device; we synchronize once per progress update, not per step.

Reproducibility: every epoch re-seeds torch and the task's generator from (seed, epoch), and a checkpoint is
written atomically after every epoch, so `resume=True` continues a killed run and ends with the same metrics as
an uninterrupted one (on CPU always; on CUDA with `deterministic: true`, since some CUDA kernels are not).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.task import Task, evaluate, predict  # noqa: F401  (evaluate, predict re-exported: leankd.train.loop)
from ..core import dist
from ..core.teacher import Teacher
from ..errors import RecipeError
from ..kd.losses import CE, Loss, LossInputs
from ..kd.topk import TopKLogits
from ..kd.taps import FeatureTaps, use_eager_attention
from ..kd.teacher import DTYPES
from ..io import write_text_atomic
from ..measure.energy import EnergyMeter
from ..measure.memory import PeakMemory
from ..recipe import TrainConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler, param_groups
from . import allocator, fsdp, sync_bn
from .speed import describe_optimizer, mark_step_begin, plan_step


@dataclass
class FitResult:
    history: list[dict]
    wall_time_s: float  # whole fit, evaluation included, summed over resumed segments
    train_time_s: float  # optimizer steps only
    samples_per_s: float
    epochs: int
    peak_memory: dict = field(default_factory=dict)
    energy: dict = field(default_factory=dict)
    resumed_from_epoch: int = 0
    speedups: list[str] = field(default_factory=list)  # throughput switches this fit ran with (train.speed)
    speedup_notes: list[str] = field(default_factory=list)  # requested switches that did not apply, and why


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def _channels_last(x, enabled: bool):
    if enabled and isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    loss: Optional[Loss] = None,
    teacher: Optional[Teacher] = None,
    seed: int = 0,
    checkpoint_path: Optional[Path] = None,
    metrics_path: Optional[Path] = None,
    resume: bool = False,
    progress: Optional["ProgressHook"] = None,
    stop_after_epoch: Optional[int] = None,
    fingerprint: Optional[str] = None,
) -> FitResult:
    """Train `model` on `task` with `loss` (default: cross-entropy with the recipe's label smoothing).

    `stop_after_epoch` ends the call early, as if the process were killed after that epoch's checkpoint
    (used by the resume tests and handy for debugging). `fingerprint` is stored in the checkpoint so a caller
    can refuse to resume a checkpoint made with other settings."""
    device = task.device
    if cfg.deterministic:
        _make_deterministic()
    loss = loss if loss is not None else CE(cfg.label_smoothing)
    if loss.needs_teacher and teacher is None:
        raise RecipeError(f"loss '{loss.describe()}' needs a teacher, but none was given")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if dist.world_size() > 1 and cfg.batch_size % dist.world_size():
        raise RecipeError(f"train.batch_size = {cfg.batch_size} is the global batch, cut into equal shares for "
                          f"{dist.world_size()} processes: make it a multiple of {dist.world_size()}")
    with contextlib.ExitStack() as undo:  # hooks come off and BatchNorm comes back even if anything below fails
        # train.sync_bn: BatchNorm over the global batch while training, plain BatchNorm again afterwards; swapped
        # before the feature taps are hooked, so a tap on a BatchNorm hooks the module that runs
        if cfg.sync_bn and dist.world_size() > 1:
            undo.callback(sync_bn.convert(model, device))
        student_taps = undo.enter_context(_closing(_setup_feature_loss(loss, model, task, teacher), teacher))
        sharded = cfg.fsdp and dist.world_size() > 1
        try:
            result = _fit(model, task, cfg, loss, teacher, student_taps, seed, checkpoint_path, metrics_path, resume,
                          progress, stop_after_epoch, fingerprint, sharded)
        except InterruptedError:  # stopped after an epoch on every rank alike: the model is whole again
            if sharded:
                fsdp.unshard_after_training(model, teacher)
            raise
        if sharded:  # before the BatchNorm swap and the hooks come off (the exit stack)
            fsdp.unshard_after_training(model, teacher)
        return result


def _fit(model, task, cfg, loss, teacher, student_taps, seed, checkpoint_path, metrics_path, resume, progress,
         stop_after_epoch, fingerprint, sharded=False) -> FitResult:
    """The body of `fit`, once the feature hooks (if any) are in place; `fit` removes them whatever happens here.
    `sharded` (train.fsdp under torchrun): the student, and a live teacher, are sharded here, before the optimizer
    is built on the student's shards; `fit` gathers them back afterwards."""
    device = task.device
    fsdp_line = fsdp.shard_for_training(model, teacher, device) if sharded else None
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
    has_adapters = any(True for _ in loss.parameters())
    extra_modules = {"loss": loss} if has_adapters else None
    groups = param_groups(model, cfg.weight_decay) + (param_groups(loss, cfg.weight_decay) if has_adapters else [])
    trained_params = [p for g in groups for p in g["params"]]
    optimizer = build_optimizer(groups, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    history: list[dict] = []
    start_epoch, prior_wall, prior_train, prior_samples = 0, 0.0, 0.0, 0
    prior_peak = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, extra_modules, sharded=sharded)
        if state.get("world_size", 1) != dist.world_size():
            raise RecipeError(
                f"{checkpoint_path} was trained by {state.get('world_size', 1)} process(es) and this run has "
                f"{dist.world_size()}: resume with the same number (torchrun --nproc-per-node/--nnodes), or --force "
                "to start the stage over")
        start_epoch = state["epoch"]
        history = state["history"]
        prior_wall, prior_train, prior_samples = state["wall_time_s"], state["train_time_s"], state["samples"]
        prior_peak = state.get("peak_memory_mb")
        if metrics_path is not None and dist.is_main():  # drop rows of epochs after the checkpoint (killed between)
            _write_history(metrics_path, history)

    world = dist.world_size()
    if world > 1 and cfg.cuda_graphs:
        cfg = cfg.model_copy(update={"cuda_graphs": False})  # DDP's gradient hooks do not replay in a CUDA graph
        graph_note = ["cuda_graphs: not applied under torchrun (DDP's gradient all-reduce does not replay in a graph)"]
    else:
        graph_note = []
    step_model = _ddp(model, device) if world > 1 and not sharded else model  # FSDP: the sharded root itself
    plan = plan_step(step_model, cfg, device, reads_features=student_taps is not None)
    plan.skipped += graph_note
    plan.applied.append(describe_optimizer(optimizer))
    plan.applied += getattr(teacher, "speedups", [])
    if device.type == "cpu" and allocator.tune():
        plan.applied.append(allocator.DESCRIPTION)
    if cfg.fsdp and world == 1:
        plan.skipped.append("fsdp: one process, nothing to shard: trained as a plain one-process run")
    if sharded:
        plan.applied.append(f"{fsdp_line}, {cfg.batch_size // world} examples per process and step"
                            + (", BatchNorm over the global batch (sync_bn)" if cfg.sync_bn else ""))
    elif world > 1:
        plan.applied.append(f"DistributedDataParallel over {dist.describe()}, {cfg.batch_size // world} examples per "
                            "process and step" + (", BatchNorm over the global batch (sync_bn)" if cfg.sync_bn else ""))
    if cfg.accumulate > 1:
        plan.applied.append(f"gradient accumulation: {cfg.accumulate} micro-batches per step")
    adapter_params = [p for p in loss.parameters() if p.requires_grad] if world > 1 else []
    if not dist.is_main():  # rank 0 shows the progress; the others train quietly, but a hook that decides for
        progress = getattr(progress, "on_other_ranks", lambda: None)()  # every rank (QAT's divergence watch) stays
    # 10 ms sampling: fine enough for epoch-long peaks, cheap enough not to slow a 2-core machine
    with PeakMemory(device, interval_s=0.01) as peak, EnergyMeter(device) as energy:
        wall_start = time.perf_counter()
        train_time, samples = 0.0, 0
        for epoch in range(start_epoch, cfg.epochs):
            # dropout & co: an epoch is reproducible on its own; each rank draws its own masks for its share
            torch.manual_seed(seed * 1_000_003 + epoch + (7_919 * dist.rank() if world > 1 else 0))
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            labeled = torch.zeros((), device=device, dtype=torch.long)  # augmented texts carry no label
            seen, scored = 0, False
            if progress:
                progress.start_epoch(epoch + 1, cfg.epochs, steps_per_epoch)
            _sync(device)
            t0 = time.perf_counter()
            # a cached teacher knows its logits for fixed augmentation views only: the epoch replays one of them
            view = teacher.view_for_epoch(epoch) if hasattr(teacher, "view_for_epoch") else None
            batches = (task.train_batches(epoch, cfg.batch_size, seed) if view is None
                       else task.train_batches(epoch, cfg.batch_size, seed, view=view))
            for step, batch in enumerate(batches):
                if plan.mark_steps:
                    mark_step_begin()  # CUDA graphs: this step's replay may overwrite the last step's outputs
                # every rank draws the same global batch and trains on its share; `accumulate` cuts the share again
                share = task.shard_batch(batch, dist.rank(), world)
                optimizer.zero_grad(set_to_none=True)
                for m in range(cfg.accumulate):
                    micro = task.shard_batch(share, m, cfg.accumulate)
                    # no `no_sync()` between micro-batches: DDP's static graph does not allow it, so every
                    # micro-batch all-reduces (accumulation under DDP saves memory, not communication)
                    weight = _weight(micro, batch, world, cfg.accumulate)
                    value, score = _forward_backward(plan.model, task, micro, loss, teacher, student_taps, cfg, scaler,
                                                     device, epoch, epoch + (step + 1) / max(steps_per_epoch, 1),
                                                     weight)
                    # summed over shares and ranks: the whole batch's loss times its size, as one process logs it
                    loss_sum += value * micro.size if weight == 1.0 else value * (weight * batch.size / world)
                    if score is not None:
                        scored = True
                        correct += score[0]
                        labeled += score[1]
                    seen += micro.size
                _average(adapter_params, world)
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    if sharded:
                        fsdp.clip_grad_norm_(trained_params, cfg.grad_clip)
                    else:
                        nn.utils.clip_grad_norm_(trained_params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if progress and (device.type == "cpu" or step % 20 == 0 or step == steps_per_epoch - 1):
                    elapsed = time.perf_counter() - t0
                    accuracy = float(correct) / max(int(labeled), 1) if scored else None
                    progress.update(step + 1, loss=float(loss_sum) / max(seen, 1), accuracy=accuracy,
                                    samples_per_s=seen * world / max(elapsed, 1e-9))
            if world > 1:  # the epoch's figures over every rank's share: what one process would have logged
                totals = dist.all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), labeled.double(),
                                                          torch.tensor(float(seen), dtype=torch.float64, device=device),
                                                          torch.tensor(float(scored), dtype=torch.float64, device=device)]))
                loss_sum, correct, labeled = totals[0], totals[1].long(), totals[2].long()
                seen, scored = int(totals[3]), bool(totals[4] > 0)
            _sync(device)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            samples += seen
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(loss_sum) / max(seen, 1),
                # the task's batch score over labeled examples; none when it has none (regression)
                "train_accuracy": float(correct) / max(int(labeled), 1) if scored else None,
                "epoch_time_s": epoch_time,
                "samples_per_s": seen / max(epoch_time, 1e-9),
            }
            # rank 0 scores and tells the others: one history; a sharded model is scored by every rank together
            # (each forward gathers the blocks from all of them), rank 0's figures kept
            if task.has_split("val") and (dist.is_main() or sharded):
                val = evaluate(model, task, "val", max(256, cfg.batch_size))
                row.update(val_loss=val.get("loss"), val_accuracy=val.get("accuracy"), val_macro_f1=val.get("macro_f1"))
                row.update({f"val_{name}": val.get(name) for name in task.history_metrics()})
            if world > 1:
                row = {**dist.broadcast(row), "epoch_time_s": epoch_time}  # every rank keeps its own timing
            history.append(row)
            # FSDP: every rank takes part in gathering the full state dicts, rank 0 writes them
            full = fsdp.full_state(model, optimizer, extra_modules) if sharded and checkpoint_path is not None else None
            if checkpoint_path is not None and dist.is_main():
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, extra_modules=extra_modules,
                                full=full, state={
                    "epoch": epoch + 1,
                    "fingerprint": fingerprint,
                    "history": history,
                    "wall_time_s": prior_wall + time.perf_counter() - wall_start,
                    "train_time_s": prior_train + train_time,
                    "samples": prior_samples + samples,
                    "peak_memory_mb": _max(prior_peak, peak.current_peak_mb()),
                    **({"world_size": world} if world > 1 else {}),
                })
            if metrics_path is not None and dist.is_main():
                _write_history(metrics_path, history)
            if progress:  # after the checkpoint: a hook that stops the run (a search's pruner) loses nothing
                progress.end_epoch(row)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
                raise InterruptedError(f"stopped after epoch {epoch + 1} as requested")
        wall = time.perf_counter() - wall_start
    plan.finish()
    energy_result = energy.as_dict()
    if start_epoch > 0:  # the killed segment's energy was never read: a partial sum would be a false number
        energy_result = {"joules": None, "source": "not available: run was resumed, energy of the killed part unknown"}
    total_train = prior_train + train_time
    total_samples = prior_samples + samples
    peak_memory = peak.as_dict()
    peak_memory["peak_mb"] = _max(prior_peak, peak_memory.get("peak_mb"))  # the killed part's peak counts too
    return FitResult(
        history=history,
        wall_time_s=prior_wall + wall,
        train_time_s=total_train,
        samples_per_s=total_samples / max(total_train, 1e-9),
        epochs=cfg.epochs,
        peak_memory=peak_memory,
        energy=energy_result,
        resumed_from_epoch=start_epoch,
        speedups=plan.applied,
        speedup_notes=plan.skipped,
    )


def _forward_backward(step_model, task: Task, batch, loss: Loss, teacher, student_taps, cfg: TrainConfig, scaler,
                      device: torch.device, epoch: int, progress: float, weight: float):
    """One forward and backward pass of a (micro-)batch: the loss's value (detached, unweighted) and the task's
    score of it. The frozen teacher runs first: its activations are freed before the student's, which backward
    keeps, are allocated (on a CPU, running it after the student's forward made the allocator hand memory back and
    forth every step). `weight` scales the gradient of a share of a global batch (1 in one process)."""
    inputs = _channels_last(batch.inputs, cfg.channels_last)
    teacher_out = _teacher_outputs(batch, loss, teacher, student_taps)
    with autocast_context(device, cfg.precision):
        logits = task.forward(step_model, inputs)
    score = task.score_batch(logits.detach(), batch.targets)  # read before anything replays
    value = loss(loss_inputs(logits, batch, loss, teacher, student_taps, epoch + 1, cfg.epochs, progress,
                             teacher_out=teacher_out))
    scaler.scale(value if weight == 1.0 else value * weight).backward()
    return value.detach(), score


def _teacher_outputs(batch, loss: Loss, teacher, student_taps):
    """The teacher's side of a step, before the student runs: (logits, features) with feature taps, else logits
    when the loss needs a teacher, else None."""
    if student_taps is not None:
        return teacher.outputs(batch)
    return teacher(batch) if loss.needs_teacher else None


def _weight(micro, batch, world: int, micro_batches: int) -> float:
    """How much a share's mean loss counts so that the ranks' averaged gradients (DDP divides by the world size) and
    the micro-batches' summed ones equal the gradient of the mean over the whole global batch: its share of the
    batch's target rows, times the world size. Exactly 1 in one process without accumulation."""
    if world == 1 and micro_batches == 1:
        return 1.0
    return int(micro.targets.shape[0]) * world / max(int(batch.targets.shape[0]), 1)


def _average(params: list, world: int) -> None:
    """Average the gradients of trainable loss parts (FitNets adapters) over the ranks: DDP syncs the student's
    only."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce_sum(p.grad)
            p.grad.div_(world)


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """The student wrapped for data-parallel training. `static_graph`: the parameters a step uses are the same every
    step, which lets DDP cope with parameters the loss never reaches (a text model's unused pooler) without a graph
    search per step."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, static_graph=True)


def loss_inputs(logits, batch, loss: Loss, teacher, student_taps: Optional[FeatureTaps],
                epoch: Optional[int] = None, epochs: Optional[int] = None,
                progress: Optional[float] = None, teacher_out=None) -> LossInputs:
    """What the loss sees for one step: the student's logits, the targets, and — only when the loss needs them —
    the teacher's logits and (layer distillation) both models' tapped features of this very forward. `epoch`
    (from 1), `epochs` and `progress` (fractional epochs done) let a loss warm up (DKD); outside a training run
    they are None."""
    inputs = LossInputs(student=logits, targets=batch.targets, epoch=epoch, epochs=epochs, progress=progress)
    if teacher_out is None:  # callers outside the loop: the teacher runs now
        teacher_out = _teacher_outputs(batch, loss, teacher, student_taps)
    if student_taps is not None:
        inputs.teacher, inputs.teacher_features = teacher_out
        inputs.student_features = student_taps.take()
    elif loss.needs_teacher:
        inputs.teacher = teacher_out
    if isinstance(inputs.teacher, TopKLogits):  # a top-k cache: expanded only for a loss that reads dense logits
        inputs.teacher_top_k = inputs.teacher
        inputs.teacher = inputs.teacher_top_k.dense() if loss.dense_teacher() else None
    return inputs


def _setup_feature_loss(loss: Loss, model: nn.Module, task: Task, teacher) -> Optional[FeatureTaps]:
    """Hook the modules a feature loss reads and let it build its adapters from one probe batch, before the
    optimizer exists (so adapter parameters train with the student). None when the loss reads no features."""
    student_names, teacher_names = loss.student_taps(), loss.teacher_taps()
    if not student_names and not teacher_names:
        return None
    if not hasattr(teacher, "outputs"):
        raise ValueError("layer distillation needs a live teacher model (LiveTeacher) whose layers can be hooked; "
                         f"got a {type(teacher).__name__}, which gives logits only")
    teacher.tap(teacher_names)
    taps, restore = None, None
    probe = next(iter(task.eval_batches("train", 16)))  # small, unaugmented: only the shapes matter here
    was_training = model.training
    model.eval()  # the probe must not move BatchNorm statistics
    try:
        if loss.needs_attention_maps():  # sdpa returns no attention maps: eager while distilling, then back
            restore = use_eager_attention(model)
            use_eager_attention(teacher.model)  # the distilling teacher is a private copy: no need to restore
        taps = FeatureTaps(model, student_names, who="student")
        if restore is not None:
            taps.on_close.append(restore)
        with torch.no_grad():
            task.forward(model, probe.inputs)
            _, teacher_features = teacher.outputs(probe)
            loss.build(taps.take(), teacher_features)
    except BaseException:
        if taps is not None:
            taps.close()
        elif restore is not None:
            restore()
        teacher.tap([])
        raise
    finally:
        model.train(was_training)
    loss.to(task.device)
    return taps


@contextlib.contextmanager
def _closing(taps: Optional[FeatureTaps], teacher):
    """Remove the student's and the teacher's hooks when training ends, however it ends."""
    try:
        yield taps
    finally:
        if taps is not None:
            taps.close()
            teacher.tap([])


def _make_deterministic() -> None:
    """CPU kernels are deterministic already; on CUDA, cuDNN autotuning and atomics-based kernels are not."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _max(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b if a is None else a if b is None else max(a, b)


def _write_history(path: Path, history: list[dict]) -> None:
    import json

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in history))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ProgressHook:
    """What the loop tells a progress display. `leankd.train.progress` has the rich implementation."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...

    def update(self, step: int, **metrics: float) -> None: ...

    def end_epoch(self, row: dict) -> None: ...

    def on_other_ranks(self) -> Optional["ProgressHook"]:
        """What ranks other than 0 run under torchrun: nothing (rank 0 shows the progress), unless the hook takes a
        decision every rank must take with it (stopping the training)."""
        return None
