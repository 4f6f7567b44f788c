"""Text distillation side by side: a fine-tuned MiniLM-L6 teacher -> a 3-layer MiniLM student on SST-2.

Same teacher weights, student initialisation, data and recipe, run in one invocation on one machine by

  (a) TextBrewer 0.2.1.post1's GeneralDistiller from PyPI (its own venv: benchmarks/peers/setup_textbrewer_env.sh)
  (b) a plain Hugging Face `Trainer` subclass, the common blog recipe (Phil Schmid's DistillationTrainer)
  (c) leankd, teacher online
  (d) leankd, teacher logits cached first (the cache build reported apart)

What is shared: ONE prepared file (`<out>/sst2-<N>-s<seed>.json`): a seeded, class-stratified subset of N rows of
SST-2's train.tsv and the whole dev.tsv (872 rows), tokenized once with the MiniLM tokenizer (max_length 64,
truncation, no padding); the same rows as TSV (`<out>/sst2-<N>-s<seed>/`) for leankd, which tokenizes them itself
and checks that its ids are the file's. The teacher is a leankd hf:minilm teacher stage's model.safetensors
(`--teacher`; default: the teacher of `leankd run recipes/sst2_minilm.yaml`, 85.09 % on dev); the student
keeps MiniLM's pretrained layers 1, 3, 5 and a head initialised under torch.manual_seed(0) (its hash is in every
JSON). Recipe: batch 32, full batches only, AdamW lr 1e-4, weight decay 0.01 (not on biases and LayerNorm),
cosine schedule with 10 % of all steps as linear warm-up, T = 2, loss 0.9 * KD + 0.1 * CE, fp32, default threads.

Timing: each contestant runs in its own process, one after another, never together (they would share the cores);
`--rounds` > 1 runs them round-robin again, so machine drift hits all alike. Each times its training epochs only
(benchmarks/peers/text_common.py: the dev evaluation is outside), and this script reports the first epoch apart
(warm-up, allocator growth) and the median of the later epochs over all rounds (the first epoch's median when there
is one epoch), the speed against TextBrewer, dev accuracy after the last epoch (first round) and the process's peak
RSS. Results: <out>/text_peers.json and <out>/text_peers.md.

    bash benchmarks/peers/setup_textbrewer_env.sh                      # once: TextBrewer's venv (~2 min, 6 GB)
    nice -n 19 .venv/bin/python benchmarks/text_peers.py --mode smoke  # does it all run (256 sentences, 1 epoch)
    .venv/bin/python benchmarks/text_peers.py --mode cpu               # 2,000 sentences, 2 epochs, 2 rounds
    .venv/bin/python benchmarks/text_peers.py --mode cpu --teacher RUN/teacher/model.safetensors --limit-train 4000 \
        --epochs 3 --rounds 1 --only leankd,textbrewer

The driver runs under leankd's venv (contestants leankd, leankd_cached and plain_trainer use sys.executable);
TextBrewer runs under --textbrewer-python (default benchmarks/peers/.venv-textbrewer/bin/python). Without that venv
the textbrewer row says how to make it and the others still run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
ROOT = HERE.parent
SST2 = ROOT.parent / "shared" / "datasets" / "text" / "sst2"
# the teacher stage of `leankd run recipes/sst2_minilm.yaml`
DEFAULT_TEACHER = ROOT / "runs" / "sst2_minilm" / "teacher" / "model.safetensors"
sys.path.insert(0, str(HERE))
from kd_speed import run, tail  # noqa: E402  (the same one-contestant-at-a-time runner as the image benchmark)

TEXTBREWER_PYTHON = PEERS / ".venv-textbrewer" / "bin" / "python"
MAX_LENGTH = 64

MODES = {  # training sentences, KD epochs, round-robin repetitions
    "smoke": {"limit_train": 256, "epochs": 1, "rounds": 1},
    "cpu": {"limit_train": 2000, "epochs": 2, "rounds": 2},
}
CONTESTANTS = ["textbrewer", "plain_trainer", "leankd", "leankd_cached"]
REFERENCE = "textbrewer"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--out", default=None, help="output folder (default: benchmarks/results/text_peers_<mode>)")
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="leankd hf:minilm teacher model.safetensors")
    p.add_argument("--sst2", default=str(SST2), help="folder with SST-2's train.tsv and dev.tsv")
    p.add_argument("--limit-train", type=int, default=None, help="training sentences (default: 2000 cpu, 256 smoke)")
    p.add_argument("--epochs", type=int, default=None, help="KD epochs (default: 2 cpu, 1 smoke)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=None, help="round-robin repetitions (default: 2 cpu, 1 smoke)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help=f"comma list out of {CONTESTANTS}")
    p.add_argument("--textbrewer-python", default=str(TEXTBREWER_PYTHON))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mode = MODES[args.mode]
    for key in ("limit_train", "epochs", "rounds"):
        if getattr(args, key) is None:
            setattr(args, key, mode[key])
    args.out = Path(args.out or HERE / "results" / f"text_peers_{args.mode}")
    unknown = set(args.only.split(",")) - set(CONTESTANTS)
    if unknown:
        p.error(f"--only: unknown contestant(s) {sorted(unknown)}; choose from {CONTESTANTS}")
    if not Path(args.teacher).is_file():
        p.error(f"--teacher {args.teacher}: no such file; run `leankd run recipes/sst2_minilm.yaml` first (its teacher "
                "stage), or give the model.safetensors of another leankd hf:minilm teacher")
    return args


# data --------------------------------------------------------------------------------------------------------------
def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a GLUE TSV: split on tabs, no quoting (sentences hold unbalanced quotes), as leankd reads."""
    if not path.is_file():
        raise SystemExit(f"{path} not found: give --sst2, the folder with SST-2's train.tsv and dev.tsv")
    table = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t",
                                   quoting=csv.QUOTE_NONE) if r]
    return table[0], table[1:]


def stratified_rows(labels: list[str], n: int, seed: int) -> list[int]:
    """`n` row indices, each class in its share of the file (largest remainder), seeded, in file order."""
    import torch

    if n >= len(labels):
        return list(range(len(labels)))
    classes = sorted(set(labels))
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    exact = {c: n * len(members[c]) / len(labels) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: exact[c] - quota[c], reverse=True)[:n - sum(quota.values())]:
        quota[c] += 1
    g = torch.Generator().manual_seed(seed)
    picked = [members[c][i] for c in classes for i in torch.randperm(len(members[c]), generator=g)[:quota[c]].tolist()]
    return sorted(picked)


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


def load_tokenizer():
    """MiniLM's fast tokenizer, from the folder every contestant loads."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(PEERS))
    from text_common import minilm_folder

    return AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True, use_fast=True)


def split_payload(header: list[str], rows: list[list[str]], tokenizer) -> dict:
    """Token ids (truncated to MAX_LENGTH, unpadded: what every contestant trains on) and integer labels."""
    label, text = header.index("label"), next(i for i, h in enumerate(header) if h in ("sentence", "content"))
    ids = tokenizer([r[text] for r in rows], truncation=True, max_length=MAX_LENGTH, return_attention_mask=False)
    return {"input_ids": ids["input_ids"], "labels": [int(r[label]) for r in rows]}


def prepare_data(args) -> tuple[Path, Path]:
    """(tokenized JSON, TSV folder) of the training subset and the dev set; reused when already there."""
    stem = f"sst2-{args.limit_train}-s{args.seed}"
    data, folder = args.out / f"{stem}.json", args.out / stem
    if data.exists() and (folder / "train.tsv").exists() and (folder / "dev.tsv").exists():
        return data, folder
    train_header, train_rows = read_tsv(Path(args.sst2) / "train.tsv")
    dev_header, dev_rows = read_tsv(Path(args.sst2) / "dev.tsv")
    labels = [r[train_header.index("label")] for r in train_rows]
    train_rows = [train_rows[i] for i in stratified_rows(labels, args.limit_train, args.seed)]
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "train.tsv", train_header, train_rows)
    write_tsv(folder / "dev.tsv", dev_header, dev_rows)
    tokenizer = load_tokenizer()
    payload = {"source": str(args.sst2), "max_length": MAX_LENGTH, "seed": args.seed,
               "train": split_payload(train_header, train_rows, tokenizer),
               "dev": split_payload(dev_header, dev_rows, tokenizer)}
    write_atomic(data, json.dumps(payload) + "\n")
    print(f"wrote {data} and {folder}/: {len(train_rows)} train, {len(dev_rows)} dev sentences", flush=True)
    return data, folder


# contestants -------------------------------------------------------------------------------------------------------
def commands(args, data: Path, folder: Path) -> dict[str, list[str]]:
    common = ["--data", str(data), "--teacher", str(args.teacher), "--device", "cpu", "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    leankd = [sys.executable, str(PEERS / "text_leankd_run.py")] + common + ["--source", str(folder)]
    return {
        "textbrewer": [args.textbrewer_python, str(PEERS / "text_textbrewer_run.py")] + common,
        "plain_trainer": [sys.executable, str(PEERS / "text_trainer_run.py")] + common,
        "leankd": leankd,
        "leankd_cached": leankd + ["--cached"],
    }


def run_all(args, data: Path, folder: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Every chosen contestant, round-robin, one at a time: ({name: [result per round]}, {name: why it failed})."""
    chosen, rounds, failed = args.only.split(","), {}, {}
    if REFERENCE in chosen and not Path(args.textbrewer_python).exists():
        failed[REFERENCE] = (f"skipped: {args.textbrewer_python} not found; make TextBrewer's venv with "
                             "`bash benchmarks/peers/setup_textbrewer_env.sh`")
        print(failed[REFERENCE], flush=True)
    for r in range(args.rounds):
        for name, cmd in commands(args, data, folder).items():
            if name not in chosen or name in failed:
                continue
            log, out = args.out / f"{name}.r{r}.log", args.out / f"{name}.r{r}.json"
            out.unlink(missing_ok=True)
            code, wall = run(cmd + ["--out", str(out)], log)
            if code != 0 or not out.exists():
                failed[name] = f"exit {code}, see {log.name}"
                print(f"{name} failed:\n{tail(log)}", flush=True)
                continue
            rounds.setdefault(name, []).append({**json.loads(out.read_text()), "process_wall_s": wall})
    return rounds, failed


# summary -----------------------------------------------------------------------------------------------------------
def merge_rounds(runs: list[dict]) -> dict:
    """The first round's result with every round's epoch times (`rounds`); accuracy and RSS are the first round's
    (same seed: equal up to CPU nondeterminism)."""
    return {**runs[0], "rounds": [r["seconds_per_epoch"] for r in runs],
            "cache_build_s_rounds": [r["cache_build_s"] for r in runs if "cache_build_s" in r] or None}


def epoch_seconds(result: dict) -> tuple[float, float]:
    """(median first epoch, median of the later epochs) over all rounds; one epoch: the first epoch's median twice."""
    first = statistics.median(r[0] for r in result["rounds"])
    later = [s for r in result["rounds"] for s in r[1:]]
    return first, statistics.median(later) if later else first


def summarize(name: str, result: dict, reference: dict | None) -> dict:
    first, rest = epoch_seconds(result)
    builds = result.get("cache_build_s_rounds")
    row = {"contestant": name, "tool": result["tool"], "first_epoch_s": first, "epoch_s": rest,
           "dev_accuracy": result["dev_accuracy"], "peak_rss_mb": result.get("peak_rss_mb"),
           "cache_build_s": statistics.median(builds) if builds else None,
           "student_head_sha": result.get("student_head_sha")}
    row["x_vs_textbrewer"] = epoch_seconds(reference)[1] / rest if reference and rest else None
    return row


def fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


NOTES = [
    ("Batching is each contestant's own and is not changed to favour anyone, since that is part of what is compared: "
     "leankd batches by length buckets (its default: sentences of similar length share a batch, padded to their own "
     "longest); the Trainer subclass pads each randomly drawn batch to its longest sentence (DataCollatorWithPadding, "
     "no bucketing); TextBrewer runs as its users would run it: a plain shuffled DataLoader with the same padding, "
     "eager attention on both models (what its attention losses need; kept although only logits are distilled "
     "here), its TensorBoard scalar logging every step and its student checkpoint at the end of every epoch (inside "
     "the epoch time; `checkpoint_save_s` in the JSON times one such save)."),
    ("TextBrewer's `kd_loss_type=\"ce\"` is the soft cross-entropy without the T^2 factor that leankd and the "
     "Trainer subclass apply (KL * T^2): at T = 2 its KD gradient is a quarter of theirs for the same 0.9 weight. "
     "That is TextBrewer's loss as shipped; it moves accuracy, not the time per epoch."),
    ("The Trainer subclass runs with max_grad_norm=0 (no clipping: no other contestant clips) and Trainer's default "
     "optimizer (fused AdamW); its warm-up comes from TrainingArguments.warmup_steps, TextBrewer's from "
     "transformers' get_cosine_schedule_with_warmup, both the same integer number of steps as leankd's (their "
     "ramp starts from lr 0, leankd's from lr / warm-up steps: one step apart)."),
    ("Dev accuracy: leankd's loop evaluates its student; the peers use text_common.evaluate (dynamic padding, batch "
     "256). Peak RSS is the whole process's (getrusage), model loading and the teacher included."),
]
TABLE_NOTE = ("s/epoch is the median of the epochs after the first over all rounds (with one epoch: the first epoch's "
              "median); x vs TextBrewer divides TextBrewer's s/epoch by the contestant's (above 1: faster). The cache "
              "build is the cached teacher's one pass over the training set, not in its epochs.")
TABLE_HEAD = [("| contestant | s/epoch (median) | 1st epoch (s) | x vs TextBrewer | dev acc. after last epoch | "
               "peak RSS MB | cache build (s) |"), "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]


def table_row(r: dict) -> str:
    if r.get("failed"):
        return f"| {r['contestant']} | {r['failed']} | | | | | |"
    return (f"| {r['tool']} | {fmt(r['epoch_s'])} | {fmt(r['first_epoch_s'])} | "
            f"{fmt(r['x_vs_textbrewer'], '.2f', 'x')} | {fmt(r['dev_accuracy'], '.2%')} | "
            f"{fmt(r['peak_rss_mb'], '.0f')} | {fmt(r['cache_build_s'])} |")


def markdown(s: dict) -> str:
    steps = s["num_train"] // s["batch_size"]
    head = [f"# Text KD side by side: MiniLM-L6 teacher -> 3-layer MiniLM student, SST-2 ({s['mode']} mode)", "",
            f"- machine: {s['machine']}",
            f"- command: `{s['command']}`",
            (f"- data: {s['num_train']} training sentences (stratified subset, seed {s['seed']}), {s['num_dev']} dev "
             f"sentences; batch {s['batch_size']} (full batches only: {steps} steps per epoch), {s['epochs']} "
             f"epoch(s), {s['rounds']} round(s), contestants one after another"),
            (f"- teacher: {s['teacher']} ({fmt(s.get('teacher_dev_accuracy'), '.2%')} dev accuracy); student heads "
             f"identical: {s['same_student_init']}"), ""]
    rows = [table_row(r) for r in s["rows"]]
    return "\n".join(head + TABLE_HEAD + rows + ["", TABLE_NOTE, ""] + [f"- {n}" for n in NOTES]) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU)"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data, folder = prepare_data(args)
    rounds, failed = run_all(args, data, folder)
    results = {name: merge_rounds(runs) for name, runs in rounds.items()}
    chosen = args.only.split(",")
    rows = [{"contestant": name, "failed": why} for name, why in failed.items()]
    rows += [summarize(name, results[name], results.get(REFERENCE)) for name in chosen if name in results]
    rows.sort(key=lambda r: chosen.index(r["contestant"]))
    heads = {r.get("student_head_sha") for r in results.values()}
    prepared = json.loads(data.read_text())
    summary = {
        "mode": args.mode, "machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "seed": args.seed, "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds,
        "teacher": str(args.teacher), "data": str(data), "tsv_folder": str(folder),
        "num_train": len(prepared["train"]["labels"]), "num_dev": len(prepared["dev"]["labels"]),
        "teacher_dev_accuracy": next((r["teacher_dev_accuracy"] for r in results.values()
                                      if r.get("teacher_dev_accuracy") is not None), None),
        "same_student_init": len(heads) == 1 if results else None,
        "rows": rows, "results": results,
    }
    write_atomic(args.out / "text_peers.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_atomic(args.out / "text_peers.md", text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
