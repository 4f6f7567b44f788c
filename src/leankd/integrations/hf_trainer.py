"""Distillation inside an existing Hugging Face `Trainer` workflow: swap `Trainer` for `LeanKDTrainer`, add a teacher.

Why a Trainer subclass and not only the recipe: many users already have `TrainingArguments`, datasets and callbacks
for a fine-tuning run; distilling should cost them two lines. The name avoids TRL's `DistillationTrainer` (causal
LMs, token-level) and the blog versions that assert identical tokenizers (this one needs only the same labels).

What it does per step: the student runs under the Trainer's own autocast (fp16/bf16 from the arguments); the
teacher runs frozen, in eval mode under no_grad, on the student's device or on the CPU (`teacher_device="cpu"`, for
a GPU too small for both); the loss is a leankd loss (default 0.9 KD(T=4) + 0.1 CE) computed in fp32. The loss is a
per-batch mean, so the Trainer divides it by the gradient-accumulation steps (`loss_is_scaled_for_ga = False`):
accumulating N micro-batches gives the gradient of their mean, as without accumulation.

    from leankd.integrations.hf_trainer import LeanKDTrainer
    trainer = LeanKDTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...),
                            train_dataset=..., eval_dataset=..., alpha=0.9, temperature=4.0)
    trainer.train()
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import Trainer

from ..kd.losses import Loss, LossInputs, mix


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs


class LeanKDTrainer(Trainer):
    """`Trainer` whose loss distills `teacher_model` into `model`. Extra keywords: `teacher_model` (required),
    `kd_loss` (a leankd loss; default `alpha` * KD(`temperature`) + (1 - `alpha`) * CE), `teacher_device`
    ("same": the student's device, or "cpu")."""

    def __init__(self, *args, teacher_model: nn.Module, kd_loss: Optional[Loss] = None, alpha: float = 0.9,
                 temperature: float = 4.0, teacher_device: str = "same", **kwargs):
        super().__init__(*args, **kwargs)
        if teacher_device not in ("same", "cpu"):
            raise ValueError(f"teacher_device must be 'same' or 'cpu', got {teacher_device!r}")
        self.kd_loss = kd_loss if kd_loss is not None else mix(alpha, temperature)
        self.teacher_device = torch.device("cpu") if teacher_device == "cpu" else self.args.device
        self.teacher = teacher_model.to(self.teacher_device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

    @torch.no_grad()
    def teacher_logits(self, inputs: dict) -> torch.Tensor:
        self.teacher.eval()  # guard against a callback or user flipping it back to train mode
        moved = {k: v.to(self.teacher_device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return _logits(self.teacher(**moved)).float()

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Optional[Any] = None):
        inputs = dict(inputs)
        if "labels" not in inputs:
            raise ValueError("LeanKDTrainer needs 'labels' in every batch (the CE part of the loss and the checks "
                             "need them); for unlabeled data use kd_loss=KD(T) and pass dummy labels")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        student = _logits(outputs).float()
        teacher = self.teacher_logits(inputs).to(student.device)
        if teacher.shape != student.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student.shape)} differ: "
                             "teacher and student must predict the same labels")
        loss = self.kd_loss(LossInputs(student=student, targets=labels, teacher=teacher))
        return (loss, outputs) if return_outputs else loss
