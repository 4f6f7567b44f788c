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
    ("same": the student's device, or "cpu"), `teacher_tokenizer` (the teacher's, when it is not the student's
    `processing_class`: each batch's text is then decoded with the student's tokenizer and encoded again with the
    teacher's).

    Why the check: the batches hold the *student's* token ids. A teacher of another vocabulary would read them as
    other words and still return logits of the right shape — a silent, plausible-looking wrong run. So a teacher
    whose embedding table differs in size from the student's is refused unless `teacher_tokenizer` is given, and
    with both tokenizers the vocabularies decide (equal: the ids pass through; different: re-tokenized)."""

    def __init__(self, *args, teacher_model: nn.Module, kd_loss: Optional[Loss] = None, alpha: float = 0.9,
                 temperature: float = 4.0, teacher_device: str = "same", teacher_tokenizer: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        if teacher_device not in ("same", "cpu"):
            raise ValueError(f"teacher_device must be 'same' or 'cpu', got {teacher_device!r}")
        self.teacher_tokenizer = teacher_tokenizer if _retokenize(self.processing_class, teacher_tokenizer,
                                                                  self.model, teacher_model) else None
        self.kd_loss = kd_loss if kd_loss is not None else mix(alpha, temperature)
        self.teacher_device = torch.device("cpu") if teacher_device == "cpu" else self.args.device
        self.teacher = teacher_model.to(self.teacher_device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

    @torch.no_grad()
    def teacher_logits(self, inputs: dict) -> torch.Tensor:
        self.teacher.eval()  # guard against a callback or user flipping it back to train mode
        if self.teacher_tokenizer is not None:
            inputs = _for_teacher(inputs, self.processing_class, self.teacher_tokenizer)
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


def _vocab_rows(model: nn.Module) -> Optional[int]:
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    return getattr(embeddings, "num_embeddings", None)


def _retokenize(student_tokenizer: Any, teacher_tokenizer: Any, student: nn.Module, teacher: nn.Module) -> bool:
    """Whether the teacher needs its own tokenization of each batch; raises when it would silently misread the
    student's token ids (see LeanKDTrainer)."""
    if teacher_tokenizer is not None:
        if not hasattr(student_tokenizer, "decode"):
            raise ValueError("teacher_tokenizer is given, but the student's tokenizer is not: pass it as "
                             "processing_class=... so LeanKDTrainer can read each batch's text back and encode it for "
                             "the teacher")
        return student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab()
    s_rows, t_rows = _vocab_rows(student), _vocab_rows(teacher)
    if s_rows is not None and t_rows is not None and s_rows != t_rows:
        raise ValueError(f"the teacher embeds {t_rows} tokens and the student {s_rows}: they read different "
                         "tokenizers, so the student's token ids would be other words to the teacher. Pass the "
                         "teacher's tokenizer as teacher_tokenizer=... and the student's as processing_class=... "
                         "(LeanKDTrainer then re-tokenizes each batch's text for the teacher), or give both models "
                         "one tokenizer")
    return False


def _segments(ids: list[int], tokenizer: Any) -> list[str]:
    """One row's token ids (padding removed) -> its text, one string per segment (a sentence pair has two: the
    separator token splits them), special tokens dropped."""
    sep = getattr(tokenizer, "sep_token_id", None)
    parts, current = [], []
    for i in ids:
        if sep is not None and i == sep:
            parts.append(current)
            current = []
        else:
            current.append(i)
    parts.append(current)
    texts = [tokenizer.decode(p, skip_special_tokens=True).strip() for p in parts]
    return [t for t in texts if t] or [""]


def _for_teacher(inputs: dict, student_tokenizer: Any, teacher_tokenizer: Any) -> dict:
    """The batch's text, decoded with the student's tokenizer, encoded with the teacher's (padded to the longest
    row, truncated to the teacher's maximum length): what the teacher would have read from the raw text."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    rows = []
    for r in range(ids.shape[0]):
        kept = ids[r] if mask is None else ids[r][mask[r].bool()]
        segments = _segments(kept.tolist(), student_tokenizer)
        rows.append(teacher_tokenizer(*segments[:2], truncation=True))
    return dict(teacher_tokenizer.pad(rows, return_tensors="pt"))
