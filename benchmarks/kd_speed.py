"""What one distillation costs, side by side: ResNet-56 -> ResNet-20 on CIFAR-10, T = 4, alpha = 0.9, same data,
batch size, epochs, optimiser (SGD 0.9 nesterov, lr 0.1, wd 5e-4, cosine) and teacher weights, run in one
invocation on one machine by

  (a) torchdistill 1.1.5 from PyPI (its own venv: benchmarks/peers/setup_torchdistill_env.sh)
  (b) a plain PyTorch loop in the style of the official PyTorch KD tutorial
  (c) leankd, teacher online
  (d) leankd, teacher logits from its cache (K augmentation views)
  and, as the yardstick of the CPU target, (e) leankd training the student alone.

The teacher is trained first with leankd on the same data (or given with --teacher). Contestants run one after
another, never together (they would share the cores or the GPU), each in its own process. Each writes the JSON
of benchmarks/peers/peer_common.py; this script collects them into <out>/kd_speed.json and <out>/kd_speed.md:
seconds per epoch (first epoch, with warm-up, and the median of the rest), speed-up against torchdistill,
time to the target accuracy, final accuracy, peak GPU memory, energy.

    python benchmarks/kd_speed.py --mode cpu     # 2-core CPU: 2,000-image subset, 4 epochs, 2 rounds (~25 min)
    python benchmarks/kd_speed.py --mode gpu     # full CIFAR-10, 30 KD epochs, teacher 60 epochs
    python benchmarks/kd_speed.py --mode smoke   # does everything run (256 images, 1 epoch)

Flags pass leankd's throughput switches to (c)-(e) (--leankd-precision bf16 --leankd-cuda-graphs ...); the
peers always run as their users would run them (fp32, DataLoader with per-sample transforms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ROOT = HERE.parent
DEFAULT_TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
TORCHDISTILL_PYTHON = PEERS / ".venv-torchdistill" / "bin" / "python"

MODES = {  # subset sizes, epochs, teacher epochs, target accuracy
    "smoke": dict(limit_train=256, limit_test=128, epochs=1, teacher_epochs=1, target=None, device="cpu"),
    "cpu": dict(limit_train=2000, limit_test=1000, epochs=4, teacher_epochs=8, target=None, device="cpu"),
    "gpu": dict(limit_train=None, limit_test=None, epochs=30, teacher_epochs=60, target=0.925, device="cuda"),
}
CONTESTANTS = ["torchdistill", "plain", "leankd", "leankd_cached", "leankd_alone"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results/kd_speed_<mode>)")
    p.add_argument("--tarball", default=str(DEFAULT_TARBALL), help="CIFAR-10 JPEG tarball")
    p.add_argument("--data", default=None, help="a prepared .pt (prepare_data.py) instead of the tarball")
    p.add_argument("--teacher", default=None, help="ResNet-56 state_dict .pt instead of training one with leankd")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--target-accuracy", type=float, default=None, help="fraction, e.g. 0.925")
    p.add_argument("--device", default=None)
    p.add_argument("--num-workers", type=int, default=None, help="peers' DataLoader workers (default: 0 on CPU, "
                   "where workers would take cores from the training, 8 on GPU)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help=f"comma list out of {CONTESTANTS}")
    p.add_argument("--rounds", type=int, default=None, help="run the contestants round-robin this many times and "
                   "keep each one's median epoch (machine drift hits all alike; default 2 on CPU, 1 on GPU)")
    p.add_argument("--cache-views", type=int, default=None, help="default min(8, epochs): more views than epochs "
                   "would label views no epoch reads")
    p.add_argument("--torchdistill-python", default=str(TORCHDISTILL_PYTHON))
    p.add_argument("--leankd-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--leankd-teacher-precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--leankd-channels-last", action="store_true")
    p.add_argument("--leankd-compile", action="store_true")
    p.add_argument("--leankd-cuda-graphs", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mode = MODES[args.mode]
    args.epochs = args.epochs or mode["epochs"]
    args.teacher_epochs = args.teacher_epochs or mode["teacher_epochs"]
    args.target_accuracy = args.target_accuracy if args.target_accuracy is not None else mode["target"]
    args.device = args.device or mode["device"]
    if args.cache_views is None:
        args.cache_views = min(8, args.epochs)
    if args.rounds is None:
        args.rounds = 1 if args.device.startswith("cuda") or args.mode == "smoke" else 2
    if args.num_workers is None:
        args.num_workers = 0 if args.device == "cpu" else 8
    args.out = Path(args.out or HERE / "results" / f"kd_speed_{args.mode}")
    unknown = set(args.only.split(",")) - set(CONTESTANTS)
    if unknown:
        p.error(f"--only: unknown contestant(s) {sorted(unknown)}; choose from {CONTESTANTS}")
    return args


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run one contestant to completion, its output into `log`; (exit code, wall seconds)."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return code, time.perf_counter() - t0


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def prepare_data(args, mode: dict | None = None) -> Path:
    """The prepared .pt of `mode`'s subset (default: this script's `--mode`), made once in `args.out`."""
    if args.data:
        return Path(args.data)
    mode = mode or MODES[args.mode]
    if not Path(args.tarball).exists():
        raise SystemExit(f"{args.tarball} not found: give --tarball (CIFAR-10 JPEGs) or --data (a prepared .pt)")
    path = args.out / ("cifar10.pt" if mode["limit_train"] is None else
                       f"cifar10-{mode['limit_train']}-{mode['limit_test']}-s{args.seed}.pt")
    if not path.exists():
        cmd = [sys.executable, str(PEERS / "prepare_data.py"), args.tarball, "--out", str(path), "--seed", str(args.seed)]
        if mode["limit_train"] is not None:
            cmd += ["--limit-train", str(mode["limit_train"]), "--limit-test", str(mode["limit_test"])]
        code, _ = run(cmd, args.out / "prepare_data.log")
        if code != 0:
            raise SystemExit(f"preparing the data failed:\n{tail(args.out / 'prepare_data.log')}")
    return path


def common_args(args, data: Path) -> list[str]:
    out = ["--data", str(data), "--device", args.device, "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size), "--num-workers", str(args.num_workers), "--seed", str(args.seed)]
    return out + (["--target-accuracy", str(args.target_accuracy)] if args.target_accuracy is not None else [])


def leankd_flags(args) -> list[str]:
    flags = ["--precision", args.leankd_precision, "--teacher-precision", args.leankd_teacher_precision]
    for name in ("channels_last", "compile", "cuda_graphs"):
        if getattr(args, f"leankd_{name}"):
            flags.append("--" + name.replace("_", "-"))
    return flags


def commands(args, data: Path, teacher: Path) -> dict[str, list[str]]:
    py, common = sys.executable, common_args(args, data)
    leankd = [py, str(PEERS / "leankd_run.py")] + common + leankd_flags(args)
    return {
        "torchdistill": [args.torchdistill_python, str(PEERS / "torchdistill_run.py")] + common
        + ["--teacher-weights", str(teacher)],
        "plain": [py, str(PEERS / "plain_loop.py")] + common + ["--teacher-weights", str(teacher)],
        "leankd": leankd + ["--teacher-weights", str(teacher)],
        "leankd_cached": leankd + ["--teacher-weights", str(teacher), "--cache-views", str(args.cache_views),
                                   "--cache-dir", str(args.out / "teacher_cache")],
        "leankd_alone": leankd + ["--alone"],
    }


def train_teacher(args, data: Path) -> tuple[Path, dict | None]:
    if args.teacher:
        return Path(args.teacher), None
    path, out = args.out / "teacher.pt", args.out / "teacher.json"
    cmd = [sys.executable, str(PEERS / "leankd_run.py")] + common_args(args, data) + leankd_flags(args)
    cmd += ["--train-teacher", str(args.teacher_epochs), "--save-teacher", str(path), "--out", str(out)]
    code, _ = run(cmd, args.out / "teacher.log")
    if code != 0:
        raise SystemExit(f"training the teacher failed:\n{tail(args.out / 'teacher.log')}")
    return path, json.loads(out.read_text())


def merge_rounds(runs: list[dict]) -> dict:
    """One result per contestant: the first round's, with every round's epoch times kept (`rounds`) and the
    epoch-time figures of `summarize` taken over all rounds. Accuracies are the first round's (same seed: equal
    on CPU up to nondeterminism; a cache reused in later rounds keeps only the first build time)."""
    merged = dict(runs[0])
    merged["rounds"] = [r["seconds_per_epoch"] for r in runs]
    return merged


def epoch_seconds(result: dict) -> tuple[float, float]:
    """(median first epoch, median of the later epochs) over all rounds."""
    rounds = result.get("rounds") or [result["seconds_per_epoch"]]
    first = statistics.median(r[0] for r in rounds)
    later = [s for r in rounds for s in r[1:]]
    return first, statistics.median(later) if later else first


def summarize(name: str, result: dict, reference: dict | None) -> dict:
    first, rest = epoch_seconds(result)
    total = sum((result.get("rounds") or [result["seconds_per_epoch"]])[0]) + (result.get("cache_build_s") or 0.0)
    row = {"contestant": name, "tool": result["tool"], "first_epoch_s": first, "epoch_s": rest, "total_s": total,
           "time_to_target_s": result.get("time_to_target_s"), "final_accuracy": result.get("final_accuracy"),
           "peak_gpu_memory_mb": result.get("peak_gpu_memory_mb"), "energy_j": result.get("energy_j"),
           "cache_build_s": result.get("cache_build_s"), "cache_reused": (result.get("cache") or {}).get("reused"),
           "speedups": result.get("speedups")}
    if reference is not None:
        row["x_faster_than_torchdistill"] = epoch_seconds(reference)[1] / rest if rest else None
        row["total_x_faster_than_torchdistill"] = sum(reference["seconds_per_epoch"]) / total if total else None
    return row


def fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def markdown(summary: dict) -> str:
    rows, alone = summary["rows"], next((r for r in summary["rows"] if r["contestant"] == "leankd_alone"), None)
    lines = [f"# KD speed: ResNet-56 -> ResNet-20, CIFAR-10 ({summary['mode']} mode)", "",
             f"- machine: {summary['machine']}", f"- command: `{summary['command']}`",
             f"- data: {summary['num_train']} train / {summary['num_test']} test images; batch {summary['batch_size']}, "
             f"{summary['epochs']} KD epochs, T = 4, alpha = 0.9; teacher ResNet-56 at "
             f"{fmt(summary.get('teacher_accuracy'), '.2%')} test accuracy; {summary['rounds']} round(s), contestants "
             "interleaved", "",
             f"- images per epoch: {summary.get('samples_per_epoch')} (full batches only, for every contestant); "
             "SGD 0.9 nesterov, lr 0.1, wd 5e-4 (leankd exempts biases and norm weights from weight decay, the peers "
             "do not), cosine stepped every iteration", "",
             "| contestant | s/epoch (median, after the 1st) | 1st epoch (s) | x faster than torchdistill | "
             "x student alone | whole run incl. cache (s) | whole run x faster | time to target (s) | final acc. | "
             "peak GPU MB | energy (J) | cache build (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['contestant']} | failed: {r['failed']} | | | | | | | | | | |")
            continue
        vs_alone = r["epoch_s"] / alone["epoch_s"] if alone and not alone.get("failed") else None
        lines.append(f"| {r['tool']} | {fmt(r['epoch_s'])} | {fmt(r['first_epoch_s'])} | "
                     f"{fmt(r.get('x_faster_than_torchdistill'), '.2f', 'x')} | {fmt(vs_alone, '.2f', 'x')} | "
                     f"{fmt(r['total_s'], '.1f')} | {fmt(r.get('total_x_faster_than_torchdistill'), '.2f', 'x')} | "
                     f"{fmt(r['time_to_target_s'], '.1f')} | {fmt(r['final_accuracy'], '.2%')} | "
                     f"{fmt(r['peak_gpu_memory_mb'], '.0f')} | {fmt(r['energy_j'], '.0f')} | "
                     f"{fmt(r['cache_build_s'], '.1f')}{' (reused)' if r.get('cache_reused') else ''} |")
    lines += ["", f"Target accuracy: {fmt(summary['target_accuracy'], '.1%')}; time to target sums the epochs' "
              "training times up to the first epoch at or above it (the cache build included for the cached "
              "teacher). \"x student alone\" divides by leankd training the same student without a teacher. "
              "\"Whole run\" is the first round's training epochs plus the cache build: the cache pays off once "
              "the epochs (over every student and run that reuses it) outnumber the views it labels. Energy: the "
              "peers' covers their training epochs; leankd's covers its whole fit, per-epoch evaluation included."]
    for r in rows:
        if r.get("speedups"):
            lines.append(f"- {r['tool']}: {', '.join(r['speedups'])}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU)"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    teacher, teacher_result = train_teacher(args, data)
    chosen = args.only.split(",")
    if "torchdistill" in chosen and not Path(args.torchdistill_python).exists():
        print(f"torchdistill skipped: {args.torchdistill_python} not found "
              "(make it with: bash benchmarks/peers/setup_torchdistill_env.sh)", flush=True)
    rounds: dict[str, list[dict]] = {}
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        for name, cmd in commands(args, data, teacher).items():
            if name not in chosen or name in failed:
                continue
            log, out = args.out / f"{name}.r{r}.log", args.out / f"{name}.r{r}.json"
            if name == "torchdistill" and not Path(args.torchdistill_python).exists():
                failed[name] = "its venv is missing (benchmarks/peers/setup_torchdistill_env.sh)"
                continue
            code, wall = run(cmd + ["--out", str(out)], log)
            if code != 0 or not out.exists():
                failed[name] = f"exit {code}, see {log.name}"
                print(f"{name} failed:\n{tail(log)}", flush=True)
                continue
            rounds.setdefault(name, []).append({**json.loads(out.read_text()), "process_wall_s": wall})
    results = {name: merge_rounds(runs) for name, runs in rounds.items()}
    rows = [{"contestant": name, "failed": why} for name, why in failed.items()]
    for name in chosen:
        if name in results:
            rows.append(summarize(name, results[name], results.get("torchdistill")))
    rows.sort(key=lambda r: chosen.index(r["contestant"]))
    any_result = next(iter(results.values()), {})
    summary = {
        "mode": args.mode, "machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds, "target_accuracy": args.target_accuracy,
        "num_train": any_result.get("num_train"), "num_test": any_result.get("num_test"),
        "samples_per_epoch": (any_result.get("num_train") or 0) // args.batch_size * args.batch_size or None,
        "teacher_accuracy": next((r.get("teacher_accuracy") for r in results.values() if r.get("teacher_accuracy")),
                                 None),
        "teacher_training": teacher_result, "rows": rows, "results": results,
    }
    write_atomic(args.out / "kd_speed.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_atomic(args.out / "kd_speed.md", text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
