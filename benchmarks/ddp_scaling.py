"""Data-parallel scaling of one distillation: ResNet-56 -> ResNet-20 KD (teacher online, T = 4, alpha = 0.9) on
CIFAR-10 from ../shared/datasets, the same global batch, epochs and teacher weights, on 1 process and on N processes
(torchrun, DistributedDataParallel), in one invocation with the contestants interleaved round by round.

  CPU mode: the same cores both ways: 1 process x T threads vs T processes x 1 thread (gloo). What it tells you:
            whether DDP's per-step all-reduce and the smaller per-process batches cost more than the parallelism
            inside each op saves, on this machine.
  GPU mode: 1 GPU vs every GPU of the machine (NCCL), full CIFAR-10.

Each contestant is benchmarks/peers/leankd_run.py (the loop's own per-epoch time, device synchronised, validation
excluded), writing the JSON of peers/peer_common.py; this script collects them into <out>/ddp_scaling.json and
<out>/ddp_scaling.md: median seconds per epoch after the first, images/s, speed-up and scaling efficiency
(speed-up / processes), the spread over rounds, and the machine's load average around each run.

    python benchmarks/ddp_scaling.py --mode cpu      # 2-core CPU: 2,000 images, 3 epochs, 3 rounds (~15 min)
    python benchmarks/ddp_scaling.py --mode gpu      # every GPU: full CIFAR-10, 3 epochs, 3 rounds
    python benchmarks/ddp_scaling.py --mode smoke    # does everything run (256 images, 2 epochs, 1 round)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kd_speed  # noqa: E402  (data preparation, teacher training, machine description)

MODES = {
    "smoke": dict(limit_train=256, limit_test=128, epochs=2, teacher_epochs=1, rounds=1, device="cpu"),
    "cpu": dict(limit_train=2000, limit_test=1000, epochs=3, teacher_epochs=4, rounds=3, device="cpu"),
    "gpu": dict(limit_train=None, limit_test=None, epochs=3, teacher_epochs=10, rounds=3, device="cuda"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results/ddp_scaling_<mode>)")
    p.add_argument("--tarball", default=str(kd_speed.DEFAULT_TARBALL), help="CIFAR-10 JPEG tarball")
    p.add_argument("--data", default=None, help="a prepared .pt (peers/prepare_data.py) instead of the tarball")
    p.add_argument("--teacher", default=None, help="ResNet-56 state_dict .pt instead of training one")
    p.add_argument("--processes", type=int, default=None, help="N (default: CPU cores, or every GPU)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mode = MODES[args.mode]
    args.epochs = args.epochs or mode["epochs"]
    args.teacher_epochs = mode["teacher_epochs"]
    args.rounds = args.rounds or mode["rounds"]
    args.device = mode["device"]
    args.out = Path(args.out or HERE / "results" / f"ddp_scaling_{args.mode}")
    if args.processes is None:
        if args.device == "cuda":
            import torch

            args.processes = max(torch.cuda.device_count(), 1)
        else:
            args.processes = os.cpu_count() or 1
    # what kd_speed's helpers read
    args.num_workers, args.target_accuracy = 0, None
    args.leankd_precision = args.leankd_teacher_precision = "fp32"
    args.leankd_channels_last = args.leankd_compile = args.leankd_cuda_graphs = False
    return args


def contestants(args, data: Path, teacher: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (command, environment): the same leankd_run.py, on one process or under torchrun."""
    script = [str(HERE / "peers" / "leankd_run.py")] + kd_speed.common_args(args, data) + [
        "--teacher-weights", str(teacher)]
    n = args.processes
    if args.device == "cpu":  # the same cores both ways
        one_env, many_env = {"OMP_NUM_THREADS": str(n)}, {"OMP_NUM_THREADS": "1"}
    else:
        one_env, many_env = {"CUDA_VISIBLE_DEVICES": "0"}, {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    return {"1 process": ([sys.executable] + script, one_env),
            f"{n} processes": (torchrun + script, many_env)}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = kd_speed.prepare_data(args, MODES[args.mode])
    teacher, _ = kd_speed.train_teacher(args, data) if args.teacher is None else (Path(args.teacher), None)
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):  # interleaved: machine drift hits both alike
        for name, (cmd, env) in contestants(args, data, teacher).items():
            out = args.out / f"{name.replace(' ', '_')}-r{r}.json"
            before = loadavg()
            t0 = time.perf_counter()
            code = subprocess.call(cmd + ["--out", str(out)], env={**os.environ, **env},
                                   stdout=open(args.out / f"{out.stem}.log", "w"), stderr=subprocess.STDOUT,
                                   cwd=kd_speed.ROOT)
            if code != 0:
                raise SystemExit(f"{name} failed (exit {code}): see {args.out / (out.stem + '.log')}")
            result = json.loads(out.read_text())
            result.update(load_before=before, load_after=loadavg(), wall_s=time.perf_counter() - t0)
            runs.setdefault(name, []).append(result)
            print(f"round {r + 1}/{args.rounds} {name}: {statistics.median(result['seconds_per_epoch'][1:] or result['seconds_per_epoch']):.2f} s/epoch", flush=True)
    summary = summarize(args, runs)
    (args.out / "ddp_scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "ddp_scaling.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


def summarize(args, runs: dict[str, list[dict]]) -> dict:
    rows = []
    base = None
    for name, results in runs.items():
        later = [s for res in results for s in res["seconds_per_epoch"][1:]] or [
            s for res in results for s in res["seconds_per_epoch"]]
        per_round = [statistics.median(res["seconds_per_epoch"][1:] or res["seconds_per_epoch"]) for res in results]
        epoch_s = statistics.median(later)
        images = results[0]["num_train"] // args.batch_size * args.batch_size  # full batches only
        row = {"contestant": name, "processes": results[0].get("processes", 1),
               "threads_per_process": results[0].get("threads_per_process"), "epoch_s": epoch_s,
               "epoch_s_per_round": per_round, "images_per_s": images / epoch_s,
               "final_accuracy": results[0].get("final_accuracy"),
               "load": [f"{res['load_before']} -> {res['load_after']}" for res in results]}
        base = base or row
        row["speedup"] = row["images_per_s"] / base["images_per_s"]
        # GPUs add devices, so speed-up / processes is the efficiency; CPU mode splits the same cores, so it is not
        row["scaling_efficiency"] = (row["speedup"] / (row["processes"] / base["processes"])
                                     if args.device == "cuda" else None)
        rows.append(row)
    return {"mode": args.mode, "machine": kd_speed.machine(), "device": args.device, "epochs": args.epochs,
            "rounds": args.rounds, "batch_size": args.batch_size,
            "command": "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:]), "rows": rows}


def markdown(s: dict) -> str:
    lines = [f"# DDP scaling: ResNet-56 -> ResNet-20 KD, teacher online ({s['mode']} mode)", "",
             f"- machine: {s['machine']}", f"- command: `{s['command']}`",
             f"- global batch {s['batch_size']}, {s['epochs']} epochs, {s['rounds']} round(s) interleaved; s/epoch is "
             "the median over rounds of the epochs after the first", "",
             "| run | processes x threads | s/epoch | per round | images/s | speed-up | scaling efficiency | "
             "final acc. | load (1/5/15 min, before -> after) |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in s["rows"]:
        lines.append(f"| {r['contestant']} | {r['processes']} x {r['threads_per_process']} | {r['epoch_s']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['epoch_s_per_round'])} | {r['images_per_s']:.0f} | "
                     f"{r['speedup']:.2f}x | {kd_speed.fmt(r['scaling_efficiency'], '.0%')} | "
                     f"{kd_speed.fmt(r['final_accuracy'], '.2%')} | {'; '.join(r['load'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
