"""Contestants "leankd" and "leankd_cached" of benchmarks/text_peers.py: leankd's Python API, teacher online or cached.

The MiniLM-L6 -> 3-layer student distillation as a leankd user would write it; "leankd_cached" first stores the
teacher's logits and trains from them.

Why `fit` on a task built from the driver's TSV folder (not `leankd run`): the driver's folder holds exactly the rows
of the tokenized JSON the peers read, and this way leankd tokenizes, buckets and batches them its own way (that is
part of what is compared) while `check_same_data` proves its token ids equal the peers'. The teacher, the student
initialisation and the recipe are those of text_common.py.

Timing: `seconds_per_epoch` is the loop's own `epoch_time_s` (validation excluded); `dev_accuracy` the loop's
evaluation on the dev set (the task's "val" split) after the last epoch. With `--cached` the teacher first labels
the training set once (views=1: text is not augmented per epoch) into a fresh temporary cache; that build is
reported as `cache_build_s`, apart from the epochs.

    python benchmarks/peers/text_leankd_run.py --data text.json --source subset/ --teacher model.safetensors \
        --epochs 2 [--cached] --out leankd.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_common as tc  # noqa: E402

from leankd.kd.cache import build_or_load  # noqa: E402
from leankd.kd.losses import mix  # noqa: E402
from leankd.kd.teacher import LiveTeacher  # noqa: E402
from leankd.models import create_model, load_weights  # noqa: E402
from leankd.recipe import TrainConfig, parse_recipe  # noqa: E402
from leankd.tasks import build_task  # noqa: E402
from leankd.train.loop import evaluate, fit  # noqa: E402


def build_text_task(source: str, max_length: int, device: torch.device, seed: int):
    recipe = parse_recipe({
        "data": {"task": "text_classification", "source": source, "eval_split": "val",
                 "text": {"max_length": max_length, "tokenizer": "minilm"}},
        "teacher": {"model": "hf:minilm"},
        "student": {"model": "hf:minilm", "kwargs": {"layers": 3}},
    })
    return build_task(recipe.data, device, seed=seed)


def check_same_data(task, data: dict) -> None:
    """leankd tokenizes the TSV folder itself: its ids and labels must be the peers' (same rows, same order)."""
    for split, name in (("train", "train"), ("val", "dev")):
        enc, want = task.encodings[task.primary][split], data[name]
        labels = task.splits[split].labels.cpu().tolist()
        ids = [row[:n].tolist() for row, n in zip(enc.ids.cpu(), enc.lengths.cpu().tolist())]
        if ids != want["input_ids"] or labels != want["labels"]:
            raise SystemExit(f"leankd's {split} split differs from the prepared {name} data: the --source folder and "
                             "--data file must come from the same text_peers.py run")


def train_config(args, steps_per_epoch: int, warmup: int) -> TrainConfig:
    """The shared recipe; leankd takes the warm-up in epochs, so `warmup` steps become warmup / steps_per_epoch."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr,
                       weight_decay=args.weight_decay, warmup_epochs=warmup / steps_per_epoch, schedule="cosine")


def cached_teacher(live: LiveTeacher, task, teacher, seed: int, cache_dir: str):
    """Label the training set once (one view) into `cache_dir`; (cached teacher, build seconds, cache info)."""
    tc.sync(task.device)
    t0 = time.perf_counter()
    cached, info = build_or_load(Path(cache_dir), f"text-peers-s{seed}", live, task, views=1, seed=seed,
                                 log=lambda m: print(m, file=sys.stderr))
    tc.sync(task.device)
    build_s = time.perf_counter() - t0
    teacher.to("cpu")  # only the student runs from here on
    return cached, build_s, info.as_dict()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tc.add_common_args(p)
    p.add_argument("--source", required=True, help="the driver's folder with train.tsv and dev.tsv")
    p.add_argument("--cached", action="store_true", help="distill from cached teacher logits (built first)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = tc.load_data(args.data)
    task = build_text_task(args.source, data["max_length"], device, args.seed)
    check_same_data(task, data)

    teacher = load_weights(create_model("hf:minilm", num_classes=2), args.teacher)
    torch.manual_seed(args.seed)
    student = create_model("hf:minilm", num_classes=2, layers=3)
    for model in (teacher, student):
        task.prepare_model(model)
    extra = {"student_head_sha": tc.head_sha(student.hf.classifier)}
    live = LiveTeacher(teacher, task)
    extra["teacher_dev_accuracy"] = evaluate(live.model, task, "val")["accuracy"]
    steps = task.steps_per_epoch(args.batch_size)
    extra["warmup_steps"] = tc.warmup_steps(args.epochs * steps)
    cfg = train_config(args, steps, extra["warmup_steps"])
    loss = mix(args.alpha, args.temperature)
    with tempfile.TemporaryDirectory(prefix="leankd-text-cache-") as cache_dir:
        kd_teacher = live
        if args.cached:
            kd_teacher, extra["cache_build_s"], extra["cache"] = cached_teacher(live, task, teacher, args.seed,
                                                                             cache_dir)
        result = fit(student, task, cfg, loss=loss, teacher=kd_teacher, seed=args.seed)
    seconds = [row["epoch_time_s"] for row in result.history]
    name = "leankd (cached teacher)" if args.cached else "leankd (teacher online)"
    payload = tc.result(name, seconds, result.history[-1]["val_accuracy"], args, data, loss=loss.describe(),
                        speedups=result.speedups, **extra)
    tc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
