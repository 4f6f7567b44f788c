"""Layer distillation on CIFAR-10, ResNet-56 -> ResNet-20: logit KD vs KD + FitNets hints on all three stages vs
KD + attention transfer vs KD + the top-2 pairs chosen automatically by CKA — accuracy over seeds, time per epoch,
and what each feature loss costs per step. Writes `<out>/layer_distill.json` and `<out>/layer_distill.md`.

    python benchmarks/layer_distill.py --mode cpu      # 2-core machines: a stratified subset, short schedule
    python benchmarks/layer_distill.py --mode gpu      # full CIFAR-10 on one GPU (bf16, channels_last)

Every method of one seed runs in the same run directory, so the teacher and the baseline are trained once and
reused by fingerprint; seeds > the first load the first seed's teacher (`teacher.checkpoint`), so all students
learn from the same teacher and the spread over seeds is the students' own. Each method's report.json is kept.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import leankd
from leankd.io import write_text_atomic

STAGES = [["layer1", "layer1"], ["layer2", "layer2"], ["layer3", "layer3"]]
METHODS = {  # name -> distill.features (the logit part, alpha 0.9 T 4, is the same for all)
    "logit_kd": [],
    "kd+hints(all stages)": [{"kind": "hint", "pairs": STAGES}],
    "kd+at": [{"kind": "at", "weight": 1000, "pairs": STAGES}],
    "kd+auto_top2(hint)": [{"kind": "hint", "pairs": "auto", "top_k": 2}],
}
MODES = {
    # 2 CPU cores (~45 min): 2,250 training images, teacher 30 epochs (10 left it below the students), students 10
    # epochs, 2,000 test images — a small-scale comparison, noisy by nature
    "cpu": dict(device="cpu", limit_train=2500, limit_test=2000, teacher_epochs=30, epochs=10, batch_size=128,
                precision="fp32", channels_last=False),
    # seconds: checks the script end to end, numbers meaningless
    "smoke": dict(device="cpu", limit_train=300, limit_test=200, teacher_epochs=1, epochs=1, batch_size=64,
                  precision="fp32", channels_last=False),
    # one GPU: the full training set
    "gpu": dict(device="cuda", limit_train=None, limit_test=None, teacher_epochs=60, epochs=60, batch_size=128,
                precision="bf16", channels_last=True),
}


def recipe(mode: dict, data: str, seed: int, features: list, teacher_checkpoint: str | None) -> dict:
    teacher = {"model": "resnet56", "train": {"epochs": mode["teacher_epochs"]}}
    if teacher_checkpoint:
        teacher["checkpoint"] = teacher_checkpoint
    return {
        "name": "layer_distill", "seed": seed, "device": mode["device"],
        "data": {"source": data, "val_fraction": 0.1, "limit_train": mode["limit_train"],
                 "limit_test": mode["limit_test"]},
        "teacher": teacher, "student": {"model": "resnet20"},
        "train": {"epochs": mode["epochs"], "batch_size": mode["batch_size"], "lr": 0.1, "weight_decay": 5e-4,
                  "schedule": "cosine", "precision": mode["precision"], "channels_last": mode["channels_last"]},
        "distill": {"alpha": 0.9, "temperature": 4, "features": features, "feature_control": False},
        "measure": {"latency_batch_sizes": [1]},
    }


def summarize(rows: list[dict]) -> dict:
    out = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        accs = [r["accuracy"] for r in mine]
        out[method] = {
            "seeds": [r["seed"] for r in mine], "accuracy": accs,
            "accuracy_mean": statistics.mean(accs) if accs else None,
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "s_per_epoch_mean": statistics.mean(r["s_per_epoch"] for r in mine) if mine else None,
            "feature_costs": mine[0]["feature_costs"] if mine else None, "loss": mine[0]["loss"] if mine else None,
        }
    return out


def markdown(result: dict) -> str:
    s = result["summary"]
    logit = s["logit_kd"]["accuracy_mean"]
    lines = [f"# Layer distillation, CIFAR-10 ResNet-56 -> ResNet-20 ({result['mode']} mode)", "",
             f"Teacher {result['teacher_accuracy']:.2f}%, baseline alone {result['baseline_accuracy_mean']:.2f}% "
             f"(mean of seeds {result['seeds']}); {result['settings']}", "",
             "| method | accuracy % (mean ± sd) | vs logit KD | s / epoch | extra ms / step | loss |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for method, m in s.items():
        sd = f" ± {m['accuracy_std']:.2f}" if m["accuracy_std"] is not None else ""
        extra = sum(r["extra_ms_per_step"] for r in (m["feature_costs"] or [])[1:]) if m["feature_costs"] else 0.0
        lines.append(f"| {method} | {m['accuracy_mean']:.2f}{sd} | {m['accuracy_mean'] - logit:+.2f} | "
                     f"{m['s_per_epoch_mean']:.1f} | {extra:.1f} | `{m['loss']}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/bench_layer_distill")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    mode, out = MODES[args.mode], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, teacher_ckpt, teacher_acc, baseline_accs = [], None, None, []
    started = time.perf_counter()
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        for method in args.methods:
            print(f"== seed {seed}: {method}", flush=True)
            result = leankd.run(recipe(mode, args.data, seed, METHODS[method], teacher_ckpt), run_dir=run_dir,
                                quiet=True)
            shutil.copy(run_dir / "report.json", run_dir / f"{method.replace('+', '_').replace('(', '_').replace(')', '')}.report.json")
            models = result.report["models"]
            student = models["student"]
            training = student["training"]
            rows.append({"method": method, "seed": seed, "accuracy": 100 * student["quality"]["accuracy"],
                         "s_per_epoch": training["wall_time_s"] / training["epochs"], "loss": training["loss"],
                         "feature_costs": training.get("feature_costs")})
            teacher_acc = teacher_acc or 100 * models["teacher"]["quality"]["accuracy"]
            print(f"   {rows[-1]['accuracy']:.2f}% ({rows[-1]['s_per_epoch']:.1f} s/epoch)", flush=True)
        baseline_accs.append(100 * models["baseline"]["quality"]["accuracy"])
        teacher_ckpt = teacher_ckpt or str(run_dir / "teacher" / "model.safetensors")
    result = {"benchmark": "layer_distill", "mode": args.mode, "seeds": args.seeds, "rows": rows,
              "summary": summarize(rows), "teacher_accuracy": teacher_acc,
              "baseline_accuracy_mean": statistics.mean(baseline_accs),
              "settings": {k: v for k, v in mode.items()}, "wall_s": time.perf_counter() - started,
              "environment": result.report["run"]["environment"]}
    write_text_atomic(out / "layer_distill.json", json.dumps(result, indent=2))
    write_text_atomic(out / "layer_distill.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
