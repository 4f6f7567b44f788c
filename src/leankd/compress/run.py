"""The compression phase of a run: the recipe's `compress.targets` built from the saved KD student into the run's
staging folder (rundir), each failure reported rather than fatal, and the fine-tuning setup of the targets that
train (QAT).

`CompressPhase` is the part of `Pipeline` (pipeline.py) that does this; the attributes below are set by its
constructor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from torch import nn

from ..core import dist
from ..errors import LeanKDError
from ..kd.build import build_loss
from ..measure.models import training_entry
from ..recipe import Recipe
from ..tasks.base import Task
from ..train.progress import RichProgress


class CompressPhase:
    """Builds compression targets. Needs `live_teacher`, `log` (stages.py) and `_saved` (measure/run.py) beside it."""

    recipe: Recipe
    console: Console
    quiet: bool
    failed_targets: dict[str, str]  # target -> why it failed (a note in the report)
    # under torchrun, set by `finetune_targets` on rank 0 for `compress`: each training target's fine-tuning outcome
    # (or its refusal), the files it wrote, the staging folder they are in, and the fine-tuning's teacher and loss
    finetuned: dict[str, Any]
    finetune_errors: dict[str, LeanKDError]
    finetuned_files: dict[str, set]
    staged_dir: Optional[Path]
    shared_finetune: Optional[Any]

    def reset_finetune(self) -> None:
        """No training target fine-tuned yet (`finetune_targets` fills these under torchrun)."""
        self.finetuned, self.finetune_errors, self.finetuned_files = {}, {}, {}
        self.staged_dir, self.shared_finetune = None, None

    def finetune_setup(self, task: Task, teacher: nn.Module):
        """Teacher, loss and schedule for the compression targets that train (QAT): the student stage's distillation
        continued for `compress.qat.epochs` at a small learning rate, in fp32 (fake quantization is fp32 math)."""
        from .targets import Finetune

        r = self.recipe
        student_cfg = r.stage_train("student")
        qat = r.compress.qat
        cfg = student_cfg.model_copy(update=dict(
            epochs=qat.epochs, lr=qat.lr or student_cfg.effective_lr * qat.lr_factor, lr_scaling="none",
            schedule="cosine",
            warmup_epochs=0.0, precision="fp32", compile=False, cuda_graphs=False, channels_last=False))
        # logits only: BatchNorm folding (torch.fx) flattens the student, so layer taps would not find their modules
        loss = build_loss(r.distill, student_cfg.label_smoothing, task=task)
        live = None
        if loss.needs_teacher:
            live = self.live_teacher(teacher, task, channels_last=False)
        return Finetune(cfg, loss, live, r.seed,
                        progress=lambda name: RichProgress(name, self.console, quiet=self.quiet), log=self.log,
                        retries=qat.retries, divergence_margin=qat.divergence_margin, loss_factor=qat.loss_factor)

    def finetune_targets(self, task: Task, stages: dict) -> None:
        """Under torchrun, before rank 0 measures and builds on its own: the fine-tuning of the recipe's training
        targets (QAT, qat-control), data-parallel on every rank like the stages (the ranks run this in lockstep).
        Rank 0 keeps the outcomes; `compress` then builds those artifacts from them (export, int8 conversion: once).
        In one process (or for `leankd compress`, which runs in one) nothing happens here: `compress` fine-tunes.

        A target refused with a LeanKDError (on every rank alike: the recipe and model decide it) becomes that
        target's failure in the report, as in one process; any other error in the middle of data-parallel training
        ends the job (a rank that went on alone would wait at the next collective): the stages are saved, and
        `--resume` redoes the compress phase."""
        from .targets import TRAINING_TARGETS, TARGETS, finetune_target
        from ..rundir import staging_dir

        targets = [t for t in self.recipe.compress.targets
                   if t in TRAINING_TARGETS and TARGETS.get(t).finetune is not None]
        if dist.world_size() == 1 or self.add_targets is not None or not targets or "student" not in stages:
            return
        saved = self._saved(stages, ["student", "teacher"])
        out_dir = dist.on_main(lambda: staging_dir(self.run_dir))  # `compress` builds into the same folder
        finetune = self.finetune_setup(task, saved["teacher"])
        for target in targets:
            self.log(f"compress: fine-tuning {target} on {dist.describe()} ...")
            before = {p for p in out_dir.rglob("*") if p.is_file()} if dist.is_main() else set()
            try:
                trained = finetune_target(target, saved["student"], task, out_dir,
                                          self.recipe.compress.calibration_batches, finetune)
            except LeanKDError as e:
                self.finetune_errors[target] = e
                continue
            if dist.is_main():
                self.finetuned[target] = trained
                self.finetuned_files[target] = {p for p in out_dir.rglob("*") if p.is_file()} - before
        self.staged_dir, self.shared_finetune = out_dir, finetune

    def compress(self, task: Task, student: nn.Module, teacher: Optional[nn.Module] = None,
                 targets: Optional[list[str]] = None) -> dict[str, tuple]:
        """Build `targets` (default: every `compress.targets` artifact) from the saved student, into a staging
        folder that replaces compressed/ only with the new report (rundir.commit). A target that fails is
        reported, never fatal: the run keeps its other results. Targets `finetune_targets` fine-tuned (under
        torchrun) are built from that outcome, into the staging folder it began."""
        from .targets import TRAINING_TARGETS, build_artifact, max_abs_diff
        from ..rundir import final_path, staging_dir

        out_dir = self.staged_dir if self.staged_dir is not None else staging_dir(self.run_dir)
        targets = self.recipe.compress.targets if targets is None else targets
        finetune = self.shared_finetune
        if finetune is None and teacher is not None and TRAINING_TARGETS.intersection(targets):
            finetune = self.finetune_setup(task, teacher)
        built = {}
        for target in targets:
            self.log(f"compress: building {target} ...")
            # the files its fine-tuning wrote count as this target's: removed with it if it fails
            staged_before = {p for p in out_dir.rglob("*") if p.is_file()} - self.finetuned_files.get(target, set())
            try:
                if target in self.finetune_errors:
                    raise self.finetune_errors[target]
                art = build_artifact(target, student, task, out_dir, self.recipe.compress.calibration_batches,
                                     finetune=finetune if target in TRAINING_TARGETS else None,
                                     trained=self.finetuned.get(target))
            except Exception as e:  # noqa: BLE001 - a failing artifact (even a torch/ORT error) never loses the run
                for partial in {p for p in out_dir.rglob("*") if p.is_file()} - staged_before:
                    partial.unlink()  # never merged over the good artifact an earlier call built
                why = str(e) if isinstance(e, LeanKDError) else f"{type(e).__name__}: {e}"
                self.log(f"[bold red]compress: {target} failed:[/] {why}")
                self.failed_targets[target] = why
                continue
            info = {"target": target, "base_role": "student", "format": art.format,
                    "path": final_path(self.run_dir, art.path), "quantized": art.quantized,
                    "left_in_float": art.left_in_float, "notes": list(art.notes),
                    "max_abs_diff": round(max_abs_diff(student, art.runnable, task, task.forward), 6)}
            if art.training is not None:
                info["training"] = training_entry(art.training, finetune.loss, finetune.cfg, task.device,
                                                  getattr(task, "samples_per_example", 1))
            if art.metrics_path:
                info["history"] = final_path(self.run_dir, art.metrics_path)
            built["student_" + target.replace("-", "_")] = (art, info)
        return built
