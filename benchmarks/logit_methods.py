"""Logit-loss methods on CIFAR-10, ResNet-56 -> ResNet-20: KD, KD + logit standardization, DKD, DKD + LS and DIST,
each over the same seeds (the recipe's `seeds:` option: one teacher for all, a same-budget baseline per seed),
with accuracy mean ± sd, the paired gain over KD, and seconds per epoch. Writes `<out>/logit_methods.json` and
`<out>/logit_methods.md`.

    python benchmarks/logit_methods.py --mode cpu      # 2-core machines: the layer-distillation CPU subset
    python benchmarks/logit_methods.py --mode smoke    # seconds: the script end to end, numbers meaningless
    python benchmarks/logit_methods.py --mode gpu      # full CIFAR-10 on one GPU

All methods share one run directory, so the teacher and the baselines are trained once and reused by fingerprint;
only the KD students differ. Published anchors (CIFAR-100, 240 epochs, res56 -> res20): KD 70.66, DKD 71.97
(mdistiller). At the CPU subset's scale (2,250 images, 10 epochs) a method may well not help: the report says so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import leankd
from leankd.io import write_text_atomic

sys.path.insert(0, str(Path(__file__).parent))
from layer_distill import MODES  # noqa: E402  (the same CPU subset and schedules)

METHODS = {  # name -> distill section; KD is the alpha-mix every method is compared with
    "kd": {"alpha": 0.9, "temperature": 4},
    "kd+ls": {"alpha": 0.9, "temperature": 4, "transform": "standardize"},
    "dkd": {"temperature": 4, "loss": [{"kind": "ce"}, {"kind": "dkd", "alpha": 1, "beta": 8}]},
    "dkd+ls": {"temperature": 4, "transform": "standardize",
               "loss": [{"kind": "ce"}, {"kind": "dkd", "alpha": 1, "beta": 8}]},
    "dist": {"temperature": 4, "loss": [{"kind": "ce"}, {"kind": "dist", "beta": 2, "gamma": 2}]},
}


def recipe(mode: dict, data: str, seeds: list[int], distill: dict) -> dict:
    return {
        "name": "logit_methods", "seed": seeds[0], "seeds": seeds, "device": mode["device"],
        "data": {"source": data, "val_fraction": 0.1, "limit_train": mode["limit_train"],
                 "limit_test": mode["limit_test"]},
        "teacher": {"model": "resnet56", "train": {"epochs": mode["teacher_epochs"]}}, "student": {"model": "resnet20"},
        "train": {"epochs": mode["epochs"], "batch_size": mode["batch_size"], "lr": 0.1, "weight_decay": 5e-4,
                  "schedule": "cosine", "precision": mode["precision"], "channels_last": mode["channels_last"]},
        "distill": distill,
        "measure": {"latency_batch_sizes": [1]},
    }


def per_seed(report: dict, role: str) -> dict[int, float]:
    """Accuracy (%) of `role` at each seed, from the report's seeds block (the main seed's model otherwise)."""
    block = report.get("seeds") or {}
    values = (block.get("roles") or {}).get(role, {}).get("values") or []
    if values:
        return {seed: 100 * v for seed, v in zip(block["seeds"], values) if v is not None}
    return {report["run"]["seed"]: 100 * report["models"][role]["quality"]["accuracy"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/bench_logit_methods")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    mode, out = MODES[args.mode], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, started, report = {}, time.perf_counter(), None
    for method in args.methods:
        print(f"== {method}", flush=True)
        t0 = time.perf_counter()
        report = leankd.run(recipe(mode, args.data, args.seeds, METHODS[method]), run_dir=out / "run", quiet=True).report
        write_text_atomic(out / f"{method.replace('+', '_')}.report.json", json.dumps(report, indent=2))
        training = report["models"]["student"]["training"]
        rows[method] = {"accuracy": per_seed(report, "student"), "loss": training["loss"],
                        "s_per_epoch": training["wall_time_s"] / training["epochs"],
                        "wall_s": time.perf_counter() - t0}
        print(f"   {rows[method]['accuracy']}  ({rows[method]['s_per_epoch']:.1f} s/epoch)", flush=True)
    summary = summarize(rows, per_seed(report, "baseline"))
    result = {"benchmark": "logit_methods", "mode": args.mode, "seeds": args.seeds, "rows": rows, "summary": summary,
              "teacher_accuracy": 100 * report["models"]["teacher"]["quality"]["accuracy"],
              "settings": dict(mode), "wall_s": time.perf_counter() - started,
              "environment": report["run"]["environment"]}
    write_text_atomic(out / "logit_methods.json", json.dumps(result, indent=2))
    write_text_atomic(out / "logit_methods.md", markdown(result))
    print(markdown(result))
    return 0


def summarize(rows: dict, baseline: dict[int, float]) -> dict:
    kd = rows.get("kd", {}).get("accuracy", {})
    out = {"baseline": _stats(baseline)}
    for method, row in rows.items():
        acc = row["accuracy"]
        paired = [acc[s] - kd[s] for s in acc if s in kd] if method != "kd" else []
        out[method] = {**_stats(acc), "vs_kd_paired": paired, "vs_kd_mean": statistics.mean(paired) if paired else None,
                       "s_per_epoch": row["s_per_epoch"], "loss": row["loss"]}
    return out


def _stats(values: dict[int, float]) -> dict:
    v = list(values.values())
    return {"per_seed": values, "mean": statistics.mean(v) if v else None,
            "sd": statistics.stdev(v) if len(v) > 1 else None}


def markdown(result: dict) -> str:
    s = result["summary"]
    b = s["baseline"]
    lines = [f"# Logit-loss methods, CIFAR-10 ResNet-56 -> ResNet-20 ({result['mode']} mode)", "",
             f"Teacher {result['teacher_accuracy']:.2f}%, baseline alone {b['mean']:.2f}%"
             + (f" ± {b['sd']:.2f}" if b["sd"] is not None else "") + f" (seeds {result['seeds']}); "
             f"{result['settings']}", "",
             "| method | accuracy % (mean ± sd) | per seed | vs KD (paired mean) | s / epoch | loss |",
             "| --- | ---: | --- | ---: | ---: | --- |"]
    for method, m in s.items():
        if method == "baseline":
            continue
        sd = f" ± {m['sd']:.2f}" if m["sd"] is not None else ""
        vs = f"{m['vs_kd_mean']:+.2f}" if m["vs_kd_mean"] is not None else "—"
        seeds = ", ".join(f"{v:.2f}" for v in m["per_seed"].values())
        lines.append(f"| {method} | {m['mean']:.2f}{sd} | {seeds} | {vs} | {m['s_per_epoch']:.1f} | `{m['loss']}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
