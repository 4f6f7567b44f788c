"""One causal-LM training step of the recipe's student, in isolation: what the teacher's side of the loss costs next
to training the student alone, by teacher form — dense cached logits, or a top-k cache's compact rows (k logits,
their indices, one tail logit) read by the token divergence without expanding them to [N, V].

Why this and not epoch times: on a shared 2-core VM whole epochs drift by 10-30 % between stages
(benchmarks/lm_step_cost.py pairs them, and still reads 0.9-1.4 for the same setting); here every contestant is
the same student, batch and teacher logits in one process, timed with torch.utils.benchmark in interleaved
rounds, so a slow spell hits all alike. A step = forward, the recipe's loss (0.5 forward KL + 0.5 CE, or CE alone),
backward and an AdamW update. The teacher's logits are a fixed random batch (the step's cost does not depend on
their values); the cache's gather and transfer are not in it (they are the same for every cached form).

    python benchmarks/lm_loss_step.py [--vocab 65,512] [--top-k 16,64] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from leankd.kd.losses import CE, LossInputs  # noqa: E402
from leankd.kd.methods.divergences import ForwardKL  # noqa: E402
from leankd.kd.topk import TopKLogits, compress_top_k  # noqa: E402
from leankd.models import create_model  # noqa: E402


def contestants(vocab: int, top_ks: list[int], batch: int, context: int, seed: int) -> dict:
    """name -> a zero-argument step function, all on the same student, tokens and teacher logits."""
    torch.manual_seed(seed)
    model = create_model("gpt", num_classes=vocab, context=context, layers=2, hidden=48, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(vocab, (batch, context))
    targets = torch.randint(vocab, (batch * context,))
    teacher = torch.randn(batch * context, vocab) * 3
    kd, ce = ForwardKL() * 0.5 + CE() * 0.5, CE()

    def step(loss, **teacher_side):
        def run():
            opt.zero_grad(set_to_none=True)
            logits = model(ids).reshape(-1, vocab)
            loss(LossInputs(student=logits, targets=targets, **teacher_side)).backward()
            opt.step()
        return run

    out = {"student alone (CE)": step(ce), "cached dense": step(kd, teacher=teacher)}
    for k in top_ks:
        if k < vocab:
            out[f"cached top-{k}"] = step(kd, teacher_top_k=TopKLogits(compress_top_k(teacher, k), k, vocab))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", default="65,512", help="vocabulary sizes (65: the recipe's characters)")
    p.add_argument("--top-k", default="16,64")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement (blocked_autorange)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_loss_step"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    top_ks = [int(k) for k in args.top_k.split(",")]
    results = {}
    for vocab in (int(v) for v in args.vocab.split(",")):
        steps = contestants(vocab, top_ks, args.batch, args.context, seed=0)
        for fn in steps.values():  # warm-up: allocator, first-call dispatch
            fn(), fn()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(args.rounds):
            names = list(steps)
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each round
                m = tb.Timer("fn()", globals={"fn": steps[name]}, num_threads=args.threads).blocked_autorange(
                    min_run_time=args.min_run_time)
                times[name].append(m.median)
        alone = times["student alone (CE)"]
        results[vocab] = {name: {"step_ms": [round(t * 1e3, 3) for t in ts],
                                 # paired by round: each round's ratio against the same round's student-alone step
                                 "ratio_by_round": [round(t / a, 4) for t, a in zip(ts, alone)]}
                          for name, ts in times.items()}
        for name, row in results[vocab].items():
            rs = row["ratio_by_round"]
            print(f"V={vocab} {name}: median step {statistics.median(row['step_ms']):.2f} ms, x alone "
                  f"{statistics.median(rs):.3f} ({min(rs):.3f}-{max(rs):.3f})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "load_avg": list(os.getloadavg())}, "settings": vars(args), "results": results}
    (out / "lm_loss_step.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["| vocabulary | teacher | step (ms, median) | x student alone, median of rounds (range) |",
             "| ---: | --- | ---: | ---: |"]
    for vocab, rows in results.items():
        for name, row in rows.items():
            rs = row["ratio_by_round"]
            lines.append(f"| {vocab} | {name} | {statistics.median(row['step_ms']):.2f} | "
                         f"{statistics.median(rs):.3f} ({min(rs):.3f}-{max(rs):.3f}) |")
    (out / "lm_loss_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
