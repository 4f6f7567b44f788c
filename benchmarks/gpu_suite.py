"""GPU proof suite: every GPU claim of leankd measured by one command, inside a wall-clock budget it enforces itself.

Why one command: a lent GPU comes for minutes (one H100, no network, at most 8 files back). So everything runs from
one invocation, in order of value, each part as a subprocess; a part whose estimated H100 cost no longer fits the
budget is SKIPPED with a note (never half-run), and one that still overruns is killed at the budget and said so.

  1. kd_speed      the side-by-side KD epoch (benchmarks/kd_speed.py --mode gpu): torchdistill 1.1.5, a plain loop,
                   leankd with the teacher online and from its cache, bf16 + channels_last + CUDA graphs; ResNet-56 ->
                   ResNet-20, batch 128, full CIFAR-10, 3 epochs, random-init teacher (as VISION's numbers to beat).
  2. fast_distill  `leankd run benchmarks/gpu/cifar10_fast.yaml`: ResNet-56 trained, then ResNet-20 distilled from
                   its cached logits; test accuracy and student training time against >= 92.5 % in < 2 minutes.
  3. ddp_scaling   benchmarks/ddp_scaling.py on every GPU (skipped with a note on a one-GPU machine).
  4. lm            recipes/tinyshakespeare_lm.yaml on the GPU (one seed).
  (A text run is not part of it: the MiniLM teacher's weights, 88 MB, do not fit the device's 64 MiB carry.)

Writes <out>/gpu_suite.json (environment, and per part: its command line, status, wall time, estimate, the part's
own raw JSON) and <out>/gpu_suite.md, and appends every part's output to <out>/gpu_suite_parts.log; the bulky
work (decoded data, run folders, per-contestant logs) stays in --work. `--smoke`: the same code paths on the CPU on
tiny data (256 CIFAR images, 1 epoch; a few hundred text blocks), a couple of minutes.

    python benchmarks/gpu_suite.py --out "$OUT" --budget 480      # on the GPU (benchmarks/gpu_suite.sh)
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite       # here, on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "datasets"
PY = sys.executable
SMOKE_LIMITS = dict(train=256, test=128)


def first_existing(*paths: Path) -> Path:
    """The carried copy (.gpu/, made by gpu_suite_prepare.sh) when present, else the shared datasets folder."""
    return next((p for p in paths if p.exists()), paths[-1])


# =============================================================================================================
# Budget: run parts in order, skip what no longer fits, kill what overruns
# =============================================================================================================
@dataclass
class Part:
    name: str
    what: str  # the claim it measures, one line
    estimate_s: float  # seconds on one H100 (reasoning in make_parts)
    command: Optional[list[str]] = None  # None: skipped, with `note`
    note: Optional[str] = None
    read: Optional[Callable[[], dict]] = None  # the part's figures, read after it ran
    env: dict = field(default_factory=dict)


def run_command(cmd: list[str], timeout_s: float, log, env: dict) -> tuple[Optional[int], float]:
    """Run `cmd` in its own process group, output appended to `log`; (exit code or None if killed, wall seconds).
    The group matters: kd_speed and torchrun start children of their own, which must die with the part."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**child_env(), **env},
                            start_new_session=True)
    try:
        code: Optional[int] = proc.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        code = None
    return code, time.perf_counter() - t0


def child_env() -> dict:
    """This checkout's src/ first on PYTHONPATH, so every part runs this leankd (not another installed copy)."""
    paths = [str(ROOT / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}


def run_parts(parts: list[Part], budget_s: float, log_path: Path, started: float) -> list[dict]:
    """One record per part: ok / failed / skipped / killed at budget, with command, wall time and figures."""
    records = []
    for part in parts:
        elapsed = time.monotonic() - started
        rec = {"name": part.name, "what": part.what, "estimate_s": part.estimate_s, "status": "skipped",
               "command": shlex.join(part.command) if part.command else None, "wall_s": None, "note": part.note}
        remaining = budget_s - elapsed
        if part.command is None:
            pass
        elif elapsed + part.estimate_s > budget_s:
            rec["note"] = (f"estimated {part.estimate_s:.0f} s, {remaining:.0f} s of the {budget_s:.0f} s budget "
                           "left: not started")
        else:
            print(f"== {part.name}: {rec['command']}  (estimate {part.estimate_s:.0f} s, {remaining:.0f} s left)",
                  flush=True)
            with open(log_path, "ab") as log:  # streamed, so a suite killed from outside still leaves its log
                log.write(f"\n===== {part.name}: {rec['command']}\n".encode())
                log.flush()
                start = log.tell()
                code, wall = run_command(part.command, remaining, log, part.env)
                log.write(f"===== {part.name}: exit {code}, {wall:.1f} s\n".encode())
            with open(log_path, "rb") as log:
                log.seek(start)
                text = log.read().decode(errors="replace")
            rec["wall_s"] = round(wall, 2)
            if code is None:
                rec["status"], rec["note"] = "killed at budget", f"still running after {wall:.0f} s: killed"
            elif code != 0:
                rec["status"], rec["note"] = "failed", f"exit {code}"
                rec["log_tail"] = "\n".join(text.splitlines()[-40:])
            else:
                rec["status"] = "ok"
            if code is not None and part.read is not None:
                try:
                    rec["result"] = part.read()
                except Exception as exc:  # a part that ran but left no readable figures says why
                    rec["read_error"] = f"{type(exc).__name__}: {exc}"
            print(f"== {part.name}: {rec['status']} in {wall:.1f} s", flush=True)
        if rec["status"] == "skipped":
            print(f"== {part.name}: skipped ({rec['note']})", flush=True)
        records.append(rec)
    return records


# =============================================================================================================
# The parts
# =============================================================================================================
ENV_PROBE = r"""
import json, os, platform, sys, torch, torchvision
from leankd.models import create_model
torch.manual_seed(0)  # a random-init ResNet-56: the speed part needs no trained teacher (VISION's numbers had none)
torch.save(create_model("resnet56", num_classes=10).state_dict(), sys.argv[1])
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "gpu_count": torch.cuda.device_count(),
    "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    "cpu_count": os.cpu_count(), "platform": platform.platform()}))
"""


def die(message: str) -> None:
    """Bad input or a machine that cannot run the suite: the message and its fix, exit 2, no traceback."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def probe(work: Path) -> dict:
    """GPU name, versions, GPU count (decides the DDP part) and the random teacher, from a short subprocess: the
    suite itself never touches CUDA, so it holds no GPU memory while the parts run."""
    out = subprocess.run([PY, "-c", ENV_PROBE, str(work / "teacher_random.pt")], capture_output=True, text=True,
                         cwd=ROOT, env=child_env(), timeout=300)
    if out.returncode != 0:
        die(f"the environment probe failed (does torch or leankd import? on the device: was .whl/ installed and "
            f"PYTHONPATH set, as benchmarks/gpu_suite.sh does?):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_json(path: Path, keep: Optional[Callable[[dict], dict]] = None) -> Callable[[], dict]:
    return lambda: (keep or (lambda d: d))(json.loads(path.read_text()))


def fast_distill_figures(run_dir: Path, target: float) -> dict:
    """Teacher/student test accuracy, the student's training time (epochs; the cache build apart) vs the target."""
    report = json.loads((run_dir / "report.json").read_text())
    models = report["models"]
    student = models["student"]
    train = student.get("training") or {}
    cache = train.get("teacher_cache") or {}
    acc = (student.get("quality") or {}).get("accuracy")
    wall = train.get("wall_time_s")
    epochs = [json.loads(line) for line in (run_dir / "student" / "metrics.jsonl").read_text().splitlines() if line]
    return {"teacher_model": models["teacher"].get("architecture"), "student_model": student.get("architecture"),
            "teacher_accuracy": (models["teacher"].get("quality") or {}).get("accuracy"),
            "student_accuracy": acc, "student_train_s": wall, "cache_build_s": cache.get("build_s"),
            "cache_views": cache.get("views"), "teacher_train_s": (models["teacher"].get("training") or {}).get(
                "wall_time_s"), "student_epochs": train.get("epochs"), "student_speedups": train.get("speedups"),
            "student_speedup_notes": train.get("speedup_notes"), "target_accuracy": target,
            "target_met": bool(acc is not None and wall is not None and acc >= target and wall < 120),
            "student_epoch_s": [row.get("epoch_time_s") for row in epochs], "report": report}


def lm_figures(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    return {role: {"quality": m.get("quality"), "train_s": (m.get("training") or {}).get("wall_time_s"),
                   "device": (m.get("training") or {}).get("device")} for role, m in report["models"].items()}


def make_parts(args, env: dict, work: Path) -> list[Part]:
    smoke = args.smoke
    tarball = first_existing(ROOT / ".gpu" / "cifar10-jpeg.tar.gz", SHARED / "cifar10-jpeg.tar.gz")
    text = first_existing(ROOT / ".gpu" / "input.txt", SHARED / "text" / "tinyshakespeare" / "input.txt")
    data = work / ("cifar10-smoke.pt" if smoke else "cifar10.pt")
    teacher = work / "teacher_random.pt"
    device = "cpu" if smoke else "cuda"
    parts = []

    # data: decoding 60,000 small JPEGs and saving 184 MB takes ~15 s on 16 cores; 30 s allows for a slow disk
    cmd = [PY, "benchmarks/peers/prepare_data.py", str(tarball), "--out", str(data)]
    if smoke:
        cmd += ["--limit-train", str(SMOKE_LIMITS["train"]), "--limit-test", str(SMOKE_LIMITS["test"])]
    parts.append(Part("data", "CIFAR-10 decoded once into the .pt every kd_speed contestant reads", 30, cmd))

    # kd_speed, ~210 s: 4 processes x ~10 s start (torch, CUDA context, 184 MB of data); torchdistill and the plain
    # loop 3 x ~9 s/epoch (VISION's H100 figures) + 3 test passes ~2 s each; leankd online: torch.compile with CUDA
    # graphs ~45 s + 3 x ~3 s; cached: compile ~20 s (inductor's cache is warm by then) + 3 views + 3 x ~1.5 s
    torchdistill = args.torchdistill_python or default_torchdistill_python()
    cmd = [PY, "benchmarks/kd_speed.py", "--mode", "smoke" if smoke else "gpu", "--out", str(work / "kd_speed"),
           "--data", str(data), "--teacher", str(teacher), "--epochs", "1" if smoke else "3", "--rounds", "1",
           "--only", "torchdistill,plain,leankd,leankd_cached", "--torchdistill-python", torchdistill,
           "--leankd-precision", "bf16", "--leankd-teacher-precision", "bf16", "--leankd-channels-last",
           "--leankd-cuda-graphs"]
    parts.append(Part("kd_speed", "one KD epoch side by side: torchdistill 1.1.5, plain loop, leankd online and cached "
                      "(bf16, channels_last, CUDA graphs), batch 128", 210, cmd,
                      read=read_json(work / "kd_speed" / "kd_speed.json")))

    # fast_distill, ~230 s: JPEG decode + start ~30 s; teacher 30 epochs x ~3 s (ResNet-56 is ~3x ResNet-20's work,
    # batch 512 bf16, no compile) = 90 s; 16 cached views ~10 s; student compile ~45 s + 30 x ~1 s; test pass,
    # CPU latency at batch 1 and the report ~25 s
    run_dir = work / "fast_distill"
    sets = [f"data.source={tarball}", f"device={device}"]
    if smoke:  # tiny data, epochs and models (the measuring stage times every model on the CPU); training in fp32
        # (this CPU has no bf16 instructions), the frozen teacher still bf16; CUDA graphs are ignored on a CPU
        sets += [f"data.limit_train={SMOKE_LIMITS['train']}", f"data.limit_test={SMOKE_LIMITS['test']}",
                 "train.epochs=1", "train.batch_size=64", "teacher.cache_views=2", "train.precision=fp32",
                 "teacher.model=resnet14", "student.model=resnet8"]
    cmd = [PY, "-m", "leankd", "run", "benchmarks/gpu/cifar10_fast.yaml", "--run-dir", str(run_dir), "--quiet",
           "--force"] + [a for s in sets for a in ("--set", s)]
    parts.append(Part("fast_distill", "ResNet-56 -> ResNet-20 from cached logits: >= 92.5 % test accuracy in "
                      "< 2 min of student training?", 230, cmd, read=lambda: fast_distill_figures(run_dir, 0.925)))

    # lm, ~130 s: teacher, baseline and student 3 epochs x 1,389 steps of a tiny GPT at ~6-8 ms (launch-bound),
    # the logit cache, int8-dynamic and per-token CPU latency with the KV cache, generation samples
    lm_dir = work / "lm"
    sets = [f"data.source={text}", f"device={device}", "seeds=[0]"]
    if smoke:
        sets += ["data.limit_train=64", "data.limit_test=16", "train.epochs=1", "measure.latency_batch_sizes=[1]",
                 "teacher.kwargs={layers: 2, hidden: 64, heads: 4}", "student.kwargs={layers: 1, hidden: 32, heads: 4}"]
    cmd = [PY, "-m", "leankd", "run", "recipes/tinyshakespeare_lm.yaml", "--run-dir", str(lm_dir), "--quiet",
           "--force"] + [a for s in sets for a in ("--set", s)]
    parts.append(Part("lm", "causal-LM distillation recipe (Tiny Shakespeare) on the GPU, one seed", 130, cmd,
                      read=lambda: lm_figures(lm_dir)))

    # ddp_scaling, ~150 s on N GPUs: 1 process vs N, 3 epochs each, 2 rounds (~3 s/epoch + start-up ~15 s a run)
    cmd = [PY, "benchmarks/ddp_scaling.py", "--mode", "smoke" if smoke else "gpu", "--out", str(work / "ddp"),
           "--data", str(data), "--teacher", str(teacher), "--rounds", "1" if smoke else "2", "--epochs",
           "1" if smoke else "3"]
    note = None
    if not smoke and env.get("gpu_count", 0) < 2:
        cmd, note = None, f"{env.get('gpu_count', 0)} GPU(s): data-parallel scaling needs at least 2"
    elif smoke:
        cmd += ["--processes", "2"]
    parts.append(Part("ddp_scaling", "data-parallel scaling of one KD epoch, 1 process vs every GPU", 150, cmd,
                      note=note, read=read_json(work / "ddp" / "ddp_scaling.json")))
    chosen = args.only.split(",") if args.only else [p.name for p in parts]
    return [p for p in parts if p.name in chosen or p.name == "data"]


def default_torchdistill_python() -> str:
    """This Python when torchdistill imports in it (the device: installed from .whl/), else its own venv's."""
    import importlib.util

    if importlib.util.find_spec("torchdistill") is not None:
        return PY
    return str(HERE / "peers" / ".venv-torchdistill" / "bin" / "python")


# =============================================================================================================
# Report
# =============================================================================================================
def fmt(v, spec: str = ".1f") -> str:
    return "—" if v is None else f"{v:{spec}}"


def markdown(s: dict) -> str:
    e = s["environment"]
    lines = [f"# GPU proof suite ({s['mode']})", "",
             f"- machine: {', '.join(e['gpus']) or 'no GPU'}; torch {e['torch']}, torchvision {e['torchvision']}, "
             f"CUDA {e['cuda']}, cuDNN {e['cudnn']}, Python {e['python']}, {e['cpu_count']} CPUs",
             f"- command: `{s['command']}`; budget {s['budget_s']:.0f} s, whole suite {s['wall_s']:.0f} s", "",
             "| part | status | wall (s) | estimate (s) | what it measures | note |", "| --- | --- | ---: | ---: | --- | --- |"]
    for p in s["parts"]:
        lines.append(f"| {p['name']} | {p['status']} | {fmt(p['wall_s'])} | {p['estimate_s']:.0f} | {p['what']} | "
                     f"{p.get('note') or p.get('read_error') or ''} |")
    for p in s["parts"]:
        r = p.get("result")
        if not r:
            continue
        lines += ["", f"## {p['name']}", "", f"`{p['command']}`", ""]
        if p["name"] == "kd_speed":
            lines += ["| contestant | s/epoch (median after the 1st) | 1st epoch (s) | x faster than torchdistill | "
                      "cache build (s) | peak GPU MB | final acc. |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for row in r["rows"]:
                if row.get("failed"):
                    lines.append(f"| {row['contestant']} | failed: {row['failed']} | | | | | |")
                    continue
                lines.append(f"| {row['tool']} | {fmt(row['epoch_s'], '.2f')} | {fmt(row['first_epoch_s'], '.2f')} | "
                             f"{fmt(row.get('x_faster_than_torchdistill'), '.2f')} | {fmt(row['cache_build_s'])} | "
                             f"{fmt(row['peak_gpu_memory_mb'], '.0f')} | {fmt(row['final_accuracy'], '.2%')} |")
        elif p["name"] == "fast_distill":
            lines.append(f"- teacher {r['teacher_model']}: {fmt(r['teacher_accuracy'], '.2%')} test accuracy, trained in "
                         f"{fmt(r['teacher_train_s'])} s; cache of {r['cache_views']} views built in "
                         f"{fmt(r['cache_build_s'])} s")
            lines.append(f"- student {r['student_model']}: **{fmt(r['student_accuracy'], '.2%')}** test accuracy after "
                         f"{r['student_epochs']} epochs, **{fmt(r['student_train_s'])} s** of training; target "
                         f">= {r['target_accuracy']:.1%} in < 120 s: **{'met' if r['target_met'] else 'not met'}**")
            lines.append(f"- student epochs (s): {', '.join(fmt(x, '.2f') for x in r['student_epoch_s'])}")
            lines.append(f"- speed-ups: {', '.join(r['student_speedups'] or [])}; notes: "
                         f"{'; '.join(r['student_speedup_notes'] or []) or 'none'}")
        elif p["name"] == "lm":
            for role, m in r.items():
                q = m["quality"] or {}
                trained = f", trained {fmt(m['train_s'])} s on {m['device']}" if m["train_s"] is not None else ""
                lines.append(f"- {role}: loss {fmt(q.get('loss'), '.3f')} nats/token{trained}")
        elif p["name"] == "ddp_scaling":
            for row in r["rows"]:
                lines.append(f"- {row['contestant']}: {row['epoch_s']:.2f} s/epoch, {row['images_per_s']:.0f} images/s, "
                             f"speed-up {row['speedup']:.2f}x")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the results are for whoever fetches them
    os.replace(tmp, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.md, gpu_suite_parts.log "
                   "(on the device: $OUT, of which at most 8 files come back)")
    p.add_argument("--work", default=None, help="folder for data, run folders and contestant logs (default: a new "
                   "temporary folder)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole suite (default 540)")
    p.add_argument("--smoke", action="store_true", help="the same code paths on the CPU on tiny data")
    p.add_argument("--only", default=None, help="comma list of parts (kd_speed, fast_distill, lm, ddp_scaling); "
                   "the data part always runs")
    p.add_argument("--torchdistill-python", default=None, help="the Python that imports torchdistill (default: this "
                   "one if it does, else benchmarks/peers/.venv-torchdistill)")
    args = p.parse_args(argv)
    known = {"kd_speed", "fast_distill", "lm", "ddp_scaling", "data"}
    if args.only and set(args.only.split(",")) - known:
        p.error(f"--only: unknown part(s) {sorted(set(args.only.split(',')) - known)}; choose from {sorted(known)}")
    if args.budget <= 0:
        p.error(f"--budget must be a positive number of seconds, got {args.budget}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    out = Path(args.out)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    for folder, flag in ((out, "--out"), (work, "--work")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            die(f"{flag} {folder}: cannot create it ({exc.strerror or exc}); give a writable folder")
    env = probe(work)
    if not args.smoke and not env["gpus"]:
        die("no CUDA GPU visible to torch: run with --smoke for the CPU check, or on the GPU machine")
    print(f"gpu suite: {', '.join(env['gpus']) or 'CPU'}, torch {env['torch']}; work folder {work}", flush=True)
    log_path = out / "gpu_suite_parts.log"
    log_path.write_text("")
    parts = run_parts(make_parts(args, env, work), args.budget, log_path, started)
    summary = {"suite": "gpu_suite", "mode": "smoke" if args.smoke else "gpu", "budget_s": args.budget,
               "command": shlex.join(["python", "benchmarks/gpu_suite.py"] + (argv if argv is not None else sys.argv[1:])),
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - started))),
               "wall_s": round(time.monotonic() - started, 1), "environment": env, "work": str(work), "parts": parts}
    write_atomic(out / "gpu_suite.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_atomic(out / "gpu_suite.md", text)
    print(text, flush=True)
    return summary


if __name__ == "__main__":
    main()
