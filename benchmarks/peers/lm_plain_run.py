"""Contestant "plain" of benchmarks/lm_peers.py: causal-LM distillation as a hand-written PyTorch loop.

What most people write first: both models in memory, the teacher's logits under no_grad every step, the loss of
lm_common.kd_ce_loss (0.5 forward KL + 0.5 CE at T = 1, fp32), `torch.optim.AdamW` with its default kernels
(no weight decay on 1-D tensors: biases and LayerNorm weights), gradient clipping, a LambdaLR schedule.

Why it copies two of leankd's choices: it draws leankd's batches (lm_common.leankd_order: the same permutation of
the same blocks) and uses leankd's schedule formula (linear warm-up from lr/W to lr over W steps, then cosine to 0),
so with the same init it follows leankd's trajectory and its val loss is a check of leankd's (they differ only by
optimizer kernels and float reordering). What it does not copy is what leankd adds around the step; the time
difference is that.

Timing: each epoch (lm_common.Stopwatch) and each step inside it; validation after the last epoch, outside both.

    python benchmarks/peers/lm_plain_run.py --data blocks.pt --teacher teacher/ --student-init student_init/ \
        --epochs 3 --out plain.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_common as lc  # noqa: E402


def leankd_schedule(warmup: int, total: int):
    """leankd's `lr_factor` for schedule cosine: (step + 1) / warmup while warming up, then cosine to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(1, total - warmup), 1.0)))
    return factor


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    lc.add_common_args(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = lc.load_blocks(args.data)
    train = data["train"].to(device)
    teacher = lc.load_causal_lm(args.teacher).to(device).eval()
    student = lc.load_causal_lm(args.student_init).to(device).train()
    init_sha = lc.weights_sha(student)
    for q in teacher.parameters():
        q.requires_grad_(False)
    params = [q for q in student.parameters() if q.requires_grad]
    groups = [{"params": [q for q in params if q.ndim > 1], "weight_decay": args.weight_decay},
              {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps = lc.steps_per_epoch(len(train), args.batch_size)
    warmup = lc.warmup_steps(args.epochs * steps, args.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, leankd_schedule(warmup, args.epochs * steps))
    epoch_clock, step_clock = lc.Stopwatch(device), lc.Stopwatch(device)
    for epoch in range(args.epochs):
        epoch_clock.start()
        for idx in lc.leankd_order(len(train), args.batch_size, epoch, args.seed, device):
            step_clock.start()
            block = train[idx]
            inputs, targets = block[:, :-1], block[:, 1:]
            with torch.no_grad():
                teacher_logits = teacher(input_ids=inputs, use_cache=False).logits
            logits = student(input_ids=inputs, use_cache=False).logits
            loss = lc.kd_ce_loss(logits, teacher_logits, targets, args.alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip:
                nn.utils.clip_grad_norm_(params, args.grad_clip)
            optimizer.step()
            scheduler.step()
            step_clock.stop()
        epoch_clock.stop()
    payload = lc.result("plain PyTorch loop", args, data, epoch_clock.seconds, lc.val_loss(student, data["val"], device),
                        seconds_per_step=step_clock.seconds, student_init_sha=init_sha, warmup_steps=warmup,
                        optimizer="torch.optim.AdamW (default kernels)",
                        loss=f"{args.alpha:g}*forward_kl(T=1) + {1 - args.alpha:g}*ce")
    lc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
