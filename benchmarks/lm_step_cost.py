"""What a causal-LM KD step costs next to training the student alone, by teacher mode: the teacher's logits from the
dense cache (every logit, fp16), from a top-k cache (k logits + indices + a tail), or the teacher run live.

Each contestant is one `leankd run` of recipes/tinyshakespeare_lm.yaml (one seed, no compression) with the teacher
loaded from given weights (--teacher-weights, e.g. a finished run's teacher/model.safetensors), so the same process
trains the baseline (the student alone) and the KD student one after the other on the same blocks: their epoch
times are a paired comparison, taken on the epochs after the first (the first holds warm-up). Contestants run in
rounds, their order rotating, so a slower spell of the machine lands on all of them alike. Quality: each KD
student's final validation loss and test loss (same split, same init). Emits JSON and a markdown table.

    python benchmarks/lm_step_cost.py --teacher-weights RUN/teacher/model.safetensors [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tinyshakespeare_lm.yaml"
VARIANTS = {  # teacher settings of each contestant
    "cached dense": {"cache": True},
    "cached top-8": {"cache": True, "cache_top_k": 8},
    "cached top-16": {"cache": True, "cache_top_k": 16},
    "cached top-32": {"cache": True, "cache_top_k": 32},
    "cached top-64": {"cache": True, "cache_top_k": 64},
    "cached top-128": {"cache": True, "cache_top_k": 128},
    "online": {"cache": False},
}


def recipe(variant: str, weights: str, run_dir: Path, limit_train: int, epochs: int, seed: int = 0,
           bpe: int = 0) -> dict:
    r = yaml.safe_load(RECIPE.read_text())
    r["data"]["source"] = str((ROOT / r["data"]["source"]).resolve())
    r["data"]["limit_train"] = limit_train
    r["seeds"] = None
    r["seed"] = seed  # the students' initialization and batch order; the split stays the recipe's (split_seed 0)
    r["data"]["split_seed"] = 0
    if bpe:  # a byte-level BPE of this many tokens instead of characters (the teacher must have been trained on it)
        r["data"]["lm"] = {**r["data"]["lm"], "tokenizer": "bpe", "vocab_size": bpe}
    r["teacher"] = {**r["teacher"], **VARIANTS[variant], "checkpoint": weights}
    r["train"]["epochs"] = epochs
    r["compress"] = {"targets": []}
    r["measure"] = {"latency_batch_sizes": [1], "latency_runs": 30, "latency_warmup": 1}
    r["output_dir"] = str(run_dir.parent)
    r["name"] = run_dir.name
    return r


def epochs_after_first(path: Path) -> list[float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["epoch_time_s"] for r in rows[1:]]


def run_one(variant: str, weights: str, work: Path, limit_train: int, epochs: int, seed: int = 0,
            bpe: int = 0) -> dict:
    run_dir = work / variant.replace(" ", "_").replace("-", "")
    path = work / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(recipe(variant, weights, run_dir, limit_train, epochs, seed, bpe)))
    start = time.perf_counter()
    faults = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "leankd.cli", "run", str(path), "--run-dir", str(run_dir), "--force",
                           "--quiet"], capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: leankd run failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads((run_dir / "report.json").read_text())
    alone, kd = epochs_after_first(run_dir / "baseline" / "metrics.jsonl"), epochs_after_first(
        run_dir / "student" / "metrics.jsonl")
    student = report["models"]["student"]
    history = [json.loads(line) for line in (run_dir / "student" / "metrics.jsonl").read_text().splitlines()]
    cache = student["training"].get("teacher_cache") or {}
    return {"variant": variant, "wall_s": round(time.perf_counter() - start, 1),
            "alone_epoch_s": alone, "kd_epoch_s": kd,
            "ratio": statistics.median(kd) / statistics.median(alone),
            "kd_val_loss": history[-1]["val_loss"], "kd_test_loss": student["quality"]["loss"],
            "baseline_test_loss": report["models"]["baseline"]["quality"]["loss"],
            "cache_bytes_per_row": cache.get("bytes_per_row"), "cache_build_s": cache.get("build_s"),
            "load_avg": list(os.getloadavg()),
            # the whole process's page faults (both stages, measurement too): a slow epoch mode that comes with
            # many more minor faults points at the allocator handing memory back and forth
            "minor_faults": after.ru_minflt - faults.ru_minflt, "major_faults": after.ru_majflt - faults.ru_majflt}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher-weights", required=True, help="the teacher's model.safetensors (a finished run's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=3000, help="training blocks (of 7,406)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_step_cost"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list out of {list(VARIANTS)}")
    p.add_argument("--bpe", type=int, default=0, help="tokenize with a byte-level BPE of this many tokens (the "
                   "teacher weights must be of that recipe variant, e.g. --set data.lm.tokenizer=bpe "
                   "--set data.lm.vocab_size=512)")
    p.add_argument("--seeds", default="0", help="students' seeds, one per round in turn (e.g. 0,1 with --rounds 2: "
                   "quality over two seeds, timing over both rounds)")
    args = p.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lm-step-cost-") as tmp:
        for r in range(args.rounds):
            seed = seeds[r % len(seeds)]
            for variant in names[r % len(names):] + names[:r % len(names)]:
                row = run_one(variant, str(Path(args.teacher_weights).resolve()), Path(tmp), args.limit_train,
                              args.epochs, seed, args.bpe)
                row["round"], row["seed"] = r, seed
                rows.append(row)
                print(f"round {r} {variant}: KD/alone {row['ratio']:.3f}, KD test loss {row['kd_test_loss']:.4f}, "
                      f"epochs alone {row['alone_epoch_s']} KD {row['kd_epoch_s']}, minor faults "
                      f"{row['minor_faults']:,}", flush=True)
    summary = {}
    for variant in names:
        mine = [row for row in rows if row["variant"] == variant]
        ratios = [row["ratio"] for row in mine]
        summary[variant] = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                            "ratio_max": max(ratios), "kd_test_loss": [row["kd_test_loss"] for row in mine],
                            "kd_val_loss": [row["kd_val_loss"] for row in mine],
                            "baseline_test_loss": [row["baseline_test_loss"] for row in mine],
                            "cache_bytes_per_row": mine[0]["cache_bytes_per_row"]}
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "settings": vars(args), "rows": rows, "summary": summary}
    (out / "lm_step_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| teacher | KD step / student-alone step, median (min-max) | KD test loss | bytes per token |",
             "| --- | ---: | ---: | ---: |"]
    for variant, s in summary.items():
        lines.append(f"| {variant} | {s['ratio_median']:.3f} ({s['ratio_min']:.3f}-{s['ratio_max']:.3f}) | "
                     + " / ".join(f"{v:.4f}" for v in s["kd_test_loss"])
                     + f" | {s['cache_bytes_per_row'] if s['cache_bytes_per_row'] else '-'} |")
    (out / "lm_step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
