"""Contestants "leankd" and "leankd_cached" of benchmarks/lm_peers.py: `leankd run` on a recipe, teacher online or
from leankd's teacher cache (`teacher.cache: true`).

The distillation as a leankd user writes it: a causal_lm recipe whose data section is the driver's (so leankd cuts,
tokenizes and blocks the text itself; the driver made blocks.pt from the very same settings), the teacher loaded
from `teacher.checkpoint` (leankd loads it and does not train it) and the student starting from
`student.checkpoint`. How leankd starts a student from given weights (src/leankd/stages.py `build_model`,
pipeline.py): `student.checkpoint` is loaded into the student before anything trains, and every student stage
(baseline, KD student) trains from a copy of it; only a *teacher* with a checkpoint is loaded instead of trained.
The checkpoint file's size and mtime join the stage fingerprint. `baseline: false` here: the student-alone stage
is not part of this comparison.

Timing comes from the run directory leankd writes: `student/metrics.jsonl` holds each epoch's `epoch_time_s` (the
loop's own: the epoch's steps only, device synchronised, validation and the epoch's checkpoint excluded) and the
val loss after the last epoch (`val_loss`: leankd's per-token mean over every val block, the same blocks and
formula as lm_common.val_loss). With the cache, `student/stage.json`'s `training.teacher_cache.build_s` is the one
pass of the teacher over the training blocks, reported apart (not in the epochs). `leankd run` also measures and
reports afterwards (latency with the KV cache, samples, report.md): that is outside every timed figure; the
process wall time and peak RSS (the child's) include it.

    python benchmarks/peers/lm_leankd_run.py --data blocks.pt --teacher teacher/ --student-init student_init/ \
        --epochs 3 [--cached] --out leankd.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_common as lc  # noqa: E402

from leankd.models import create_model, load_weights  # noqa: E402


def recipe(args, data: dict, steps: int, warmup: int) -> dict:
    """The shared recipe as a leankd recipe; warm-up in epochs (leankd's unit) = warmup steps / steps per epoch."""
    folder = Path(args.teacher).parent
    return {
        "name": "lm_peers_cached" if args.cached else "lm_peers",
        "seed": args.seed,
        "device": args.device,
        "data": json.loads(data["leankd_data"]),
        "teacher": {"model": "gpt", "kwargs": json.loads(data["teacher_kwargs"]),
                    "checkpoint": str(folder / "teacher.safetensors"), "cache": bool(args.cached)},
        "student": {"model": "gpt", "kwargs": json.loads(data["student_kwargs"]),
                    "checkpoint": str(folder / "student_init.safetensors")},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "adamw", "lr": args.lr,
                  "weight_decay": args.weight_decay, "warmup_epochs": warmup / steps, "schedule": "cosine",
                  "grad_clip": args.grad_clip},
        "distill": {"temperature": 1.0, "loss": [{"kind": "forward_kl", "weight": args.alpha},
                                                {"kind": "ce", "weight": 1.0 - args.alpha}]},
        "baseline": False,
        "measure": {"latency_batch_sizes": [1]},
    }


def student_init_sha(data: dict, path: str) -> str:
    """The student checkpoint as leankd loads it (its `gpt` with the recipe's kwargs, strictly), hashed."""
    model = create_model("gpt", num_classes=int(data["vocab_size"]), **json.loads(data["student_kwargs"]))
    return lc.weights_sha(load_weights(model, path))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    lc.add_common_args(p)
    p.add_argument("--cached", action="store_true", help="teacher.cache: true (the teacher's logits stored first)")
    p.add_argument("--keep-run", default=None, help="run directory to keep (default: a temporary one, removed)")
    args = p.parse_args(argv)
    data = lc.load_blocks(args.data)
    steps = lc.steps_per_epoch(len(data["train"]), args.batch_size)
    warmup = lc.warmup_steps(args.epochs * steps, args.warmup_fraction)
    spec = recipe(args, data, steps, warmup)
    with tempfile.TemporaryDirectory(prefix="lm-leankd-") as tmp:
        run_dir = Path(args.keep_run or Path(tmp) / "run")
        recipe_path = Path(tmp) / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        cmd = [sys.executable, "-m", "leankd.cli", "run", str(recipe_path), "--run-dir", str(run_dir), "--quiet",
               "--force"]
        code = subprocess.call(cmd, stdout=sys.stderr)  # leankd's log goes to this contestant's log
        if code != 0:
            raise SystemExit(f"`leankd run` exited {code} (its log is above); recipe: {yaml.safe_dump(spec)}")
        history = [json.loads(line) for line in (run_dir / "student" / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        stage = json.loads((run_dir / "student" / "stage.json").read_text())
    training = stage.get("training") or {}
    extra = {}
    if args.cached:
        cache = training.get("teacher_cache") or {}
        extra["cache_build_s"], extra["cache"] = cache.get("build_s"), cache
    name = "leankd run (cached teacher)" if args.cached else "leankd run (teacher online)"
    payload = lc.result(name, args, data, [row["epoch_time_s"] for row in history], history[-1]["val_loss"],
                        student_init_sha=student_init_sha(data, spec["student"]["checkpoint"]), warmup_steps=warmup,
                        speedups=training.get("speedups"), recipe=spec, **extra)
    # the `leankd run` child's peak (getrusage; it inherits at most this small process's peak through fork + exec)
    payload["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
