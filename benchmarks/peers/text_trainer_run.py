"""Contestant "plain_trainer" of benchmarks/text_peers.py: a hand-written `transformers.Trainer` subclass.

The text distillation as the common blog recipe writes it (Phil Schmid, "Task-specific knowledge distillation for
BERT using Transformers & Amazon SageMaker": DistillationTrainingArguments + DistillationTrainer).

Why this peer: it is what most people write when they distill a Hugging Face classifier; the Trainer brings its own
data loading (DataCollatorWithPadding, no length bucketing), optimizer (its default fused AdamW, no weight decay on
biases and LayerNorm weights) and scheduler. One change from the blog, so every contestant weighs the losses alike:
`alpha` weighs the KD term (0.9) and cross-entropy gets 1 - alpha (the blog's alpha weighs cross-entropy). Gradient
clipping is off (max_grad_norm=0; Trainer's default 1.0 would clip where no other contestant does).

Timing: a TrainerCallback stamps on_epoch_begin / on_epoch_end (time.perf_counter), so an epoch is the Trainer's
own loop over its batches; dev accuracy is measured after training with text_common.evaluate, outside the timing.

    python benchmarks/peers/text_trainer_run.py --data text.json --teacher model.safetensors --epochs 2 --out t.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_common as tc  # noqa: E402


class DistillationTrainingArguments(TrainingArguments):
    """TrainingArguments plus the two KD settings, as the blog defines them."""

    def __init__(self, *args, alpha: float = 0.9, temperature: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.temperature = temperature


class DistillationTrainer(Trainer):
    """The blog's trainer: the student's loss mixed with KL(teacher || student) at temperature T, times T^2."""

    def __init__(self, *args, teacher_model: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher_model
        self._move_model_to_device(self.teacher, self.model.device)  # place teacher on same device as student
        self.teacher.eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs_student = model(**inputs)
        student_loss = outputs_student.loss
        with torch.no_grad():
            outputs_teacher = self.teacher(**inputs)
        assert outputs_student.logits.size() == outputs_teacher.logits.size()
        t = self.args.temperature
        loss_function = nn.KLDivLoss(reduction="batchmean")
        loss_logits = loss_function(F.log_softmax(outputs_student.logits / t, dim=-1),
                                    F.softmax(outputs_teacher.logits / t, dim=-1)) * (t ** 2)
        loss = (1.0 - self.args.alpha) * student_loss + self.args.alpha * loss_logits
        return (loss, outputs_student) if return_outputs else loss


class EpochTimes(TrainerCallback):
    """Stamps each training epoch; the Trainer calls these around its loop over the epoch's batches."""

    def __init__(self, timer: tc.EpochTimer) -> None:
        self.timer = timer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.timer.start()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.timer.stop()


def training_args(args, out_dir: str, warmup: int) -> DistillationTrainingArguments:
    return DistillationTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup, lr_scheduler_type="cosine",
        max_grad_norm=0.0, eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=args.device == "cpu", seed=args.seed, dataloader_drop_last=True,
        alpha=args.alpha, temperature=args.temperature)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tc.add_common_args(p)
    args = p.parse_args(argv)
    tc.quiet_transformers()
    device = torch.device(args.device)
    data = tc.load_data(args.data)
    train_rows, dev_rows = tc.features(data["train"]), tc.features(data["dev"])
    tokenizer = AutoTokenizer.from_pretrained(tc.minilm_folder(), local_files_only=True, use_fast=True)
    teacher = tc.load_teacher(args.teacher)
    student = tc.build_student(args.seed)
    head = tc.head_sha(student.classifier)
    total_steps = args.epochs * (len(train_rows) // args.batch_size)
    timer = tc.EpochTimer(device)
    with tempfile.TemporaryDirectory(prefix="text-trainer-") as out_dir:
        trainer = DistillationTrainer(
            model=student, args=training_args(args, out_dir, tc.warmup_steps(total_steps)), teacher_model=teacher,
            train_dataset=train_rows, data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
            callbacks=[EpochTimes(timer)])
        trainer.train()
    accuracy = tc.evaluate(trainer.model, dev_rows, tokenizer, device)
    payload = tc.result("HF Trainer subclass (blog recipe)", timer.seconds, accuracy, args, data,
                        student_head_sha=head, warmup_steps=tc.warmup_steps(total_steps),
                        optimizer=trainer.args.optim.value,
                        loss=f"{1 - args.alpha:g}*ce + {args.alpha:g}*kl(T={args.temperature:g})*T^2")
    tc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
