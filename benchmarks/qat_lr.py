"""Which learning rate should quantization-aware distillation (`compress.targets: [qat]`) start from? For each
student and each QAT lr factor (QAT lr = factor x the student's lr, SGD with the student's momentum, cosine), this
fine-tunes the same trained KD student with int8 fake quantization (compress/qat.py: BatchNorm folded, ORT's grid)
and records the loss and the accuracy of the fake-quantized model before (= PTQ, what int8-static computes) and
after. Writes `<out>/qat_lr.json` and prints it.

    python benchmarks/qat_lr.py                                   # resnet8 and resnet14, factors 0.02 0.005 0.001
    python benchmarks/qat_lr.py --students resnet8 --factors 0.02 0.002 --qat-epochs 2

Sized for a shared 2-core CPU (1,350 training images, 4-epoch resnet8 teacher, 1 QAT epoch = 11 steps): measured
there (load 9-17, 2 threads), no factor diverged - 0.02 lowered the loss (resnet8 0.211 -> 0.206, resnet14 0.253 ->
0.242) and moved accuracy most (-1.2 / +1.8 points vs PTQ on 500 test images, within their noise), 0.005 and 0.001
barely trained (resnet14 with --student-epochs 3). The divergence seen once (a 95 % ResNet-8, loss 23.4 after a full QAT epoch at 0.02) needs many
more steps on a well-trained student than this measures; the qat target's guard catches it. mobilenetv2_x0_5 was
too slow for this machine's load (no epoch in 6 minutes).

The teacher and the KD students are trained once by an ordinary `leankd run` in `<out>/runs` (reused when the script
runs again); only the QAT fine-tuning is repeated per factor, from the same student, on the same batches. The
guard of the qat target (divergence -> lower lr -> int8-static) is NOT applied here: this measures what each lr does.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from leankd.compress.qat import prepare_qat
from leankd.compress.qat_guard import measure_start
from leankd.compress.targets import calibration
from leankd.io import write_text_atomic
from leankd.pipeline import Pipeline
from leankd.stages import build_model
from leankd.recipe import Recipe
from leankd.models import load_weights
from leankd.train.loop import evaluate, fit


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def recipe_for(student: str, args, out: Path, teacher_checkpoint: Path | None) -> Recipe:
    teacher = {"model": args.teacher, "train": {"epochs": args.teacher_epochs}}
    if teacher_checkpoint is not None:  # the first student's run trained it: the others load it
        teacher["checkpoint"] = str(teacher_checkpoint)
    return Recipe(**{
        "name": f"qat_lr_{student}", "output_dir": str(out / "runs"), "device": "cpu", "baseline": False,
        "data": {"source": "demo", "val_fraction": 0.1, "limit_train": args.limit_train,
                 "limit_test": args.limit_test},
        "teacher": teacher,
        "student": {"model": student},
        "train": {"epochs": args.student_epochs, "batch_size": 128, "lr": 0.1, "schedule": "onecycle"},
        "distill": {"alpha": 0.9, "temperature": 4},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]},
    })


def accuracy(model, task, split: str) -> float:
    return float(evaluate(model, task, split)["accuracy"])


def measure_student(student: str, args, out: Path, teacher_checkpoint: Path | None = None) -> dict:
    recipe = recipe_for(student, args, out, teacher_checkpoint)
    pipe = Pipeline(recipe, out / "runs" / recipe.name, quiet=True)
    t0 = time.perf_counter()
    pipe.run()  # teacher + KD student (reused on a second run of this script)
    prepare_s = time.perf_counter() - t0
    task = pipe.build_task()
    teacher = build_model(recipe.teacher, task.num_classes, "teacher", task.model_defaults())
    model = build_model(recipe.student, task.num_classes, "student", task.model_defaults())
    for m in (teacher, model):
        task.prepare_model(m)
    load_weights(teacher, pipe.run_dir / "teacher" / "model.safetensors")
    load_weights(model, pipe.run_dir / "student" / "model.safetensors")
    model = model.cpu().float().eval()
    ft = pipe.finetune_setup(task, teacher)
    fp32_acc = accuracy(model, task, task.eval_split)
    rows = []
    for factor in args.factors:
        qat = prepare_qat(copy.deepcopy(model))
        qat.calibrate(calibration(task, 8, model), task.forward)
        qat.set_quantize(True)
        start = accuracy(qat.model, task, task.eval_split)
        cfg = ft.cfg.model_copy(update={"lr": factor * recipe.train.lr, "epochs": args.qat_epochs})
        begin = measure_start(qat.model, task, ft.loss, ft.teacher, cfg.batch_size, recipe.seed)
        t0 = time.perf_counter()
        result = fit(qat.model, task, cfg, loss=ft.loss, teacher=ft.teacher, seed=recipe.seed)
        end = accuracy(qat.model, task, task.eval_split)
        losses = [h["train_loss"] for h in result.history]
        row = {"factor": factor, "lr": cfg.lr, "ptq_accuracy": round(start, 4), "qat_accuracy": round(end, 4),
               "delta_points": round(100 * (end - start), 2), "start_loss": round(begin.loss, 4),
               "start_val_accuracy": begin.accuracy, "train_loss": [round(x, 4) for x in losses],
               "val_accuracy": [h.get("val_accuracy") for h in result.history],
               "finite": all(math.isfinite(x) for x in losses), "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({"student": student, **row}), flush=True)
        rows.append(row)
    return {"student": student, "teacher_checkpoint": str(pipe.run_dir / "teacher" / "model.safetensors"),
            "fp32_accuracy": round(fp32_acc, 4), "student_lr": recipe.train.lr,
            "momentum": ft.cfg.momentum, "optimizer": ft.cfg.optimizer, "weight_decay": ft.cfg.weight_decay,
            "qat_epochs": args.qat_epochs, "train_examples": task.split_size("train"),
            "eval_examples": task.split_size(task.eval_split), "prepare_s": round(prepare_s, 1), "factors": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", nargs="+", default=["resnet8", "resnet14"])
    p.add_argument("--teacher", default="resnet8")
    p.add_argument("--factors", nargs="+", type=float, default=[0.02, 0.005, 0.001])
    p.add_argument("--limit-train", type=positive_int, default=1500)
    p.add_argument("--limit-test", type=positive_int, default=500)
    p.add_argument("--teacher-epochs", type=positive_int, default=4)
    p.add_argument("--student-epochs", type=positive_int, default=4)
    p.add_argument("--qat-epochs", type=positive_int, default=1)
    p.add_argument("--teacher-checkpoint", type=Path, default=None,
                   help="load the teacher from here instead of training it with the first student's run")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/qat_lr"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"load_average_start": os.getloadavg(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "students": []}
    teacher = args.teacher_checkpoint
    for student in args.students:
        result["students"].append(measure_student(student, args, args.out, teacher))
        teacher = teacher or Path(result["students"][0]["teacher_checkpoint"])
    result["load_average_end"] = os.getloadavg()
    write_text_atomic(args.out / "qat_lr.json", json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
