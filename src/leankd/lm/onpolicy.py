"""On-policy distillation (GKD, Agarwal et al. 2024; "on-policy distillation"): in a share λ of the training batches
each block keeps its first `prompt_tokens` tokens and the rest is sampled from the student being trained; the frozen
teacher scores those tokens like any others and the divergence pulls the student toward the teacher on text the
student itself produces — the exposure bias that training on the corpus alone (or on the teacher's text) leaves.

A `Policy` is what the causal_lm task's `train_batches` hands each batch to (`CausalLMTask.with_policy`), so the one
training loop runs it unchanged: teacher forward, loss, precision, checkpoints, torchrun. Which batches are rewritten
and the samples drawn are seeded by (seed, epoch, step), and the weights at a step are those a resumed run restores,
so `--resume` replays the same samples. Under torchrun every rank samples the whole global batch with its own replica
(identical weights, identical draws) and trains on its share.

Rewritten batches: inputs are the prompt followed by the samples; targets are the next tokens, with the positions
that predict a prompt token masked (-100) so the divergence is the mean over generated positions, as GKD's is.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..core.task import Batch
from .generate import generate

UNLABELED = -100


class Policy:
    """Rewrites a seeded share `fraction` of batches with continuations sampled from `model` (the student in training).
    Keeps count of what that costs (`stats`), which the report states as the extra cost per step."""

    def __init__(self, model: nn.Module, fraction: float, prompt_tokens: int, temperature: float = 1.0):
        self.model, self.fraction = model, fraction
        self.prompt_tokens, self.temperature = prompt_tokens, temperature
        self.batches = self.rewritten = 0
        self.seconds = 0.0
        self.epochs: set[int] = set()  # a resumed run counts only the epochs this process trained

    def __call__(self, batch: Batch, epoch: int, step: int, seed: int) -> Batch:
        self.batches += 1
        self.epochs.add(epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 100_003 + step + 7_717)
        if float(torch.rand((), generator=g)) >= self.fraction:
            return batch
        draw = int(torch.randint(2 ** 31 - 1, (1,), generator=g))
        start = time.perf_counter()
        inputs = batch.inputs
        context, p = inputs.shape[1], self.prompt_tokens
        window = generate(self.model, inputs[:, :p], context + 1 - p, temperature=self.temperature, seed=draw)
        window = window.to(inputs.device)
        targets = window[:, 1:].clone()
        targets[:, :p - 1] = UNLABELED
        self.seconds += time.perf_counter() - start
        self.rewritten += 1
        return Batch(window[:, :-1], targets.reshape(-1), batch.index)

    def stats(self) -> dict:
        return {"fraction": self.fraction, "prompt_tokens": self.prompt_tokens, "temperature": self.temperature,
                "batches": self.batches, "on_policy_batches": self.rewritten, "epochs_counted": len(self.epochs),
                "generation_s": round(self.seconds, 3),
                "generation_s_per_on_policy_batch": round(self.seconds / self.rewritten, 4) if self.rewritten else None}
