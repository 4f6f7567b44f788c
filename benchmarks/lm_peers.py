"""Causal-LM distillation side by side: a GPT-style character teacher -> a small GPT student on Tiny Shakespeare.

Same teacher weights, student initialisation, token blocks, batch, steps and loss (0.5 forward KL at T = 1 + 0.5
next-token CE, fp32), run in one invocation on one machine by

  (a) TRL's GKDTrainer with lmbda=0, beta=0 (forward KL on the given text) plus the CE half, from PyPI in its own
      venv (benchmarks/peers/setup_trl_env.sh; lm_trl_run.py says why this trainer and not trl.DistillationTrainer)
  (b) a plain PyTorch loop (lm_plain_run.py)
  (c) `leankd run`, teacher online (lm_leankd_run.py: teacher.checkpoint + student.checkpoint)
  (d) `leankd run`, teacher logits cached first (teacher.cache: true; the cache build reported apart)

What is shared, made once in <out>/lm_peers_<mode>/ and reused while its settings stay the same:
- `blocks.pt`: leankd's own causal_lm blocks of `context + 1` tokens (train and val), made by leankd's task from the
  data section that (c)/(d) put in their recipe, so everyone trains on the very tensors leankd trains on;
- `models/teacher/` + `models/teacher.safetensors`: a `gpt` teacher trained here once with leankd (cross-entropy),
  saved with save_pretrained (TRL, plain) and as leankd weights (teacher.checkpoint): the same tensors;
- `models/student_init/` + `models/student_init.safetensors`: the student's initial weights (seeded), likewise;
- `tokenizer/`: a PreTrainedTokenizerFast of leankd's character symbols (TRL's processing_class), checked to encode
  text exactly as leankd does.
Every model is built with `context + 1` positions: TRL's causal shift reads a whole block (context + 1 tokens) and
drops the last position's logits; leankd and the plain loop read the first `context`. Predictions per block are the
same `context` for all.

Timing: each contestant runs in its own process, one after another, never together; `--rounds` > 1 repeats them
round-robin with the order rotated by one each round, so machine drift hits all alike. s/step is each epoch's
training time divided by its steps (the figure `leankd run` records: epoch times, validation excluded), the median
over the epochs after the first of every round (the first epoch is warm-up; with one epoch, it is used); tokens/s =
batch x context / s/step. Contestants that time single steps also report the median step after the first epoch
(JSON `step_median_s`). Final validation loss is the first round's, nats per character over every val token.
Results: <out>/lm_peers.json (quick: lm_peers_quick.json, probe: lm_peers_probe.json) and the .md beside it.

    bash benchmarks/peers/setup_trl_env.sh                                   # once: TRL's venv
    .venv/bin/python benchmarks/lm_peers.py --quick                          # smoke test: tiny models, seconds
    .venv/bin/python benchmarks/lm_peers.py --mode probe                     # full-size models, 6 steps: it
                                                                             # prints what --mode cpu would take
    .venv/bin/python benchmarks/lm_peers.py --mode cpu                       # the comparison (quiet machine)

The driver runs under leankd's venv (contestants plain, leankd and leankd_cached use sys.executable); TRL runs under
--trl-python (default benchmarks/peers/.venv-trl/bin/python). Without that venv the trl row says how to make it and
the others still run.
"""

from __future__ import annotations

import argparse
import hashlib
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
CORPUS = ROOT.parent / "shared" / "datasets" / "text" / "tinyshakespeare" / "input.txt"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(PEERS))
from kd_speed import run, tail  # noqa: E402  (the same one-contestant-at-a-time runner as the image benchmark)

TRL_PYTHON = PEERS / ".venv-trl" / "bin" / "python"
CONTESTANTS = ["trl", "plain", "leankd", "leankd_cached"]
REFERENCE = "trl"

# recipes/tinyshakespeare_lm.yaml's models and split; `context` is the data's (the models get context + 1)
FULL = {"context": 128, "val_fraction": 0.1, "test_fraction": 0.05, "limit_train": None,
        "teacher": {"layers": 4, "hidden": 128, "heads": 4},
        "student": {"layers": 2, "hidden": 48, "heads": 4},
        "teacher_epochs": 3, "epochs": 3, "batch_size": 16, "rounds": 2}
MODES = {
    "quick": {"context": 32, "val_fraction": 0.02, "test_fraction": 0.01, "limit_train": 64,
              "teacher": {"layers": 2, "hidden": 32, "heads": 2}, "student": {"layers": 1, "hidden": 16, "heads": 2},
              "teacher_epochs": 1, "epochs": 3, "batch_size": 16, "rounds": 1},
    # the full run's models, context, batch and data split, 3 steps per epoch: its s/step estimates the full run's
    "probe": {**FULL, "limit_train": 96, "teacher_epochs": 1, "epochs": 2, "rounds": 1},
    "cpu": FULL,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--quick", action="store_true", help="same as --mode quick (the smoke test)")
    p.add_argument("--out", default=str(HERE / "results"), help="results folder (default: benchmarks/results)")
    p.add_argument("--source", default=str(CORPUS), help="Tiny Shakespeare's input.txt")
    p.add_argument("--epochs", type=int, default=None, help="KD epochs (default: the mode's)")
    p.add_argument("--batch-size", type=int, default=None, help="blocks per step (default: the mode's)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin repetitions (default: the mode's)")
    p.add_argument("--limit-train", type=int, default=None,
                   help="train on the first N blocks of the training part (default: the mode's; cpu: all of them)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help=f"comma list out of {CONTESTANTS}")
    p.add_argument("--teacher-weights", default=None,
                   help="a trained gpt teacher of the mode's sizes and context instead of training one here, e.g. "
                        "runs/tinyshakespeare_lm/teacher/model.safetensors (recipes/tinyshakespeare_lm.yaml's teacher)")
    p.add_argument("--trl-python", default=str(TRL_PYTHON))
    p.add_argument("--device", default="cpu", help="cpu or cuda (every contestant)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.mode = "quick"
    args.spec = dict(MODES[args.mode])
    for key in ("epochs", "batch_size", "rounds"):
        if getattr(args, key) is None:
            setattr(args, key, args.spec[key])
    if args.limit_train is not None:
        if args.limit_train < 1:
            p.error(f"--limit-train {args.limit_train}: give a positive number of blocks")
        args.spec["limit_train"] = args.limit_train
    args.out = Path(args.out)
    args.work = args.out / f"lm_peers_{args.mode}"
    unknown = set(args.only.split(",")) - set(CONTESTANTS)
    if unknown:
        p.error(f"--only: unknown contestant(s) {sorted(unknown)}; choose from {CONTESTANTS}")
    if args.teacher_weights and not Path(args.teacher_weights).is_file():
        p.error(f"--teacher-weights {args.teacher_weights}: no such file; give the model.safetensors of a leankd gpt "
                "teacher stage (e.g. of `leankd run recipes/tinyshakespeare_lm.yaml`), or leave it out to train one")
    if not Path(args.source).is_file():
        p.error(f"--source {args.source}: no such file; give Tiny Shakespeare's input.txt "
                "(../shared/datasets/text/tinyshakespeare/input.txt)")
    return args


# shared inputs -----------------------------------------------------------------------------------------------------
def leankd_data(args) -> dict:
    """The data section of the leankd recipe (c)/(d) run, and from which blocks.pt is made."""
    s = args.spec
    data = {"task": "causal_lm", "source": str(Path(args.source).resolve()), "val_fraction": s["val_fraction"],
            "lm": {"tokenizer": "chars", "context": s["context"], "test_fraction": s["test_fraction"]}}
    if s["limit_train"] is not None:
        data["limit_train"] = s["limit_train"]
    return data


def model_kwargs(args, role: str) -> dict:
    return {**args.spec[role], "context": args.spec["context"] + 1}


def settings_key(args) -> str:
    """What the shared files depend on; a change makes them again (the teacher too)."""
    keyed = {"data": leankd_data(args), "teacher": model_kwargs(args, "teacher"), "seed": args.seed,
             "student": model_kwargs(args, "student"), "teacher_epochs": args.spec["teacher_epochs"],
             "teacher_batch": args.batch_size, "format": 2,
             "corpus": [os.path.getsize(args.source), os.path.getmtime(args.source)],
             "teacher_weights": _identity(args.teacher_weights) if args.teacher_weights else None}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def _identity(path: str) -> list:
    return [str(Path(path).resolve()), os.path.getsize(path), os.path.getmtime(path)]


def windows(blocks):
    """[n, context + 1] token ids of a leankd TokenBlocks: exactly what its batches read (through its public
    `batch`: inputs, then the last target of each block)."""
    import torch

    batch = blocks.batch(torch.arange(len(blocks), device=blocks.ids.device))
    n, context = batch.inputs.shape
    return torch.cat([batch.inputs, batch.targets.reshape(n, context)[:, -1:]], dim=1).cpu()


def build_leankd_task(args):
    import torch

    from leankd.recipe import parse_recipe
    from leankd.tasks import build_task

    recipe = parse_recipe({"data": leankd_data(args), "teacher": {"model": "gpt"}, "student": {"model": "gpt"}})
    return build_task(recipe.data, torch.device(args.device), seed=args.seed)  # the teacher trains there


def train_teacher(args, task, folder: Path) -> dict:
    """A `gpt` teacher trained here with leankd (cross-entropy, the recipe's optimizer settings); saved both ways.
    Returns its val loss and training time (for estimating a run's duration)."""
    import torch

    from leankd.models import create_model
    from leankd.recipe import TrainConfig
    from leankd.train.checkpoint import save_weights
    from leankd.train.loop import evaluate, fit

    torch.manual_seed(args.seed)
    teacher = create_model("gpt", num_classes=task.num_classes, **model_kwargs(args, "teacher"))
    task.prepare_model(teacher)
    cfg = TrainConfig(epochs=args.spec["teacher_epochs"], batch_size=args.batch_size, optimizer="adamw", lr=3e-3,
                      weight_decay=0.01, warmup_epochs=0.1, schedule="cosine", grad_clip=1.0)
    print(f"training the teacher ({args.spec['teacher_epochs']} epochs) ...", flush=True)
    result = fit(teacher, task, cfg, seed=args.seed)
    teacher.hf.save_pretrained(folder / "teacher")
    save_weights(folder / "teacher.safetensors", teacher)
    steps = cfg.epochs * task.steps_per_epoch(args.batch_size)
    return {"teacher_val_loss": evaluate(teacher, task, "val", 256)["loss"], "teacher_train_s": result.train_time_s,
            "teacher_s_per_step": result.train_time_s / steps}


def load_teacher(args, task, folder: Path) -> dict:
    """A trained `gpt` teacher of this data's context (--teacher-weights) moved into the context + 1 model every
    contestant uses, saved both ways. The position table gets one row of zeros for position `context`: only the last
    token of TRL's blocks reads it, and the causal shift drops that position's logits (no kept prediction attends
    to it), so every contestant's teacher predicts exactly what the given one does."""
    import torch

    from leankd.models import create_model, load_weights
    from leankd.train.checkpoint import save_weights
    from leankd.train.loop import evaluate

    given = create_model("gpt", num_classes=task.num_classes, **{**model_kwargs(args, "teacher"),
                                                                  "context": task.context})
    load_weights(given, args.teacher_weights)
    teacher = create_model("gpt", num_classes=task.num_classes, **model_kwargs(args, "teacher"))
    state = {k: torch.cat([v, v.new_zeros(1, v.shape[1])]) if k.endswith("wpe.weight") else v
             for k, v in given.state_dict().items()}
    teacher.load_state_dict(state, strict=True)
    task.prepare_model(teacher)
    teacher.hf.save_pretrained(folder / "teacher")
    save_weights(folder / "teacher.safetensors", teacher)
    return {"teacher_val_loss": evaluate(teacher, task, "val", 256)["loss"], "teacher_train_s": None,
            "teacher_s_per_step": None, "teacher_from": str(args.teacher_weights)}


def save_student_init(args, task, folder: Path) -> None:
    import torch

    from leankd.models import create_model
    from leankd.train.checkpoint import save_weights

    torch.manual_seed(args.seed)
    student = create_model("gpt", num_classes=task.num_classes, **model_kwargs(args, "student"))
    student.hf.save_pretrained(folder / "student_init")
    save_weights(folder / "student_init.safetensors", student)


def save_tokenizer(task, folder: Path) -> None:
    """leankd's character symbols as a PreTrainedTokenizerFast (one token per character, concatenating decoder);
    refuses to go on unless it encodes text exactly as leankd's tokenizer does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = task.tokenizer.symbols
    unknown = "\ufffd" if "\ufffd" in symbols else None
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=unknown))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    ids = task.splits["val"].ids[:4000].tolist()
    text = task.tokenizer.decode(ids)
    if fast(text, add_special_tokens=False)["input_ids"] != ids or fast.decode(ids) != text:
        raise SystemExit("the character tokenizer for TRL does not encode like leankd's: cannot share the data")
    fast.save_pretrained(folder)


def prepare(args) -> dict:
    """blocks.pt, models/ and tokenizer/ in args.work, made once per settings_key; their paths and facts."""
    import torch

    key = settings_key(args)
    stamp = args.work / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return json.loads(stamp.read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    task = build_leankd_task(args)
    models = args.work / "models"
    models.mkdir(exist_ok=True)
    blocks = {"train": windows(task.splits["train"]), "val": windows(task.splits["val"]),
              "context": task.context, "vocab_size": task.num_classes, "symbols": list(task.tokenizer.symbols),
              "leankd_data": json.dumps(leankd_data(args)),
              "teacher_kwargs": json.dumps(model_kwargs(args, "teacher")),
              "student_kwargs": json.dumps(model_kwargs(args, "student"))}
    data_path = args.work / "blocks.pt"
    torch.save(blocks, data_path)
    save_tokenizer(task, args.work / "tokenizer")
    save_student_init(args, task, models)
    teacher = load_teacher(args, task, models) if args.teacher_weights else train_teacher(args, task, models)
    facts = {"key": key, "data": str(data_path), "teacher": str(models / "teacher"),
             "student_init": str(models / "student_init"), "tokenizer": str(args.work / "tokenizer"),
             **teacher, "vocab_size": task.num_classes, "context": task.context,
             "train_blocks": len(blocks["train"]), "val_blocks": len(blocks["val"]),
             "train_blocks_unlimited": (task.splits["train"].tokens - 1) // task.context,
             "teacher_kwargs": model_kwargs(args, "teacher"), "student_kwargs": model_kwargs(args, "student"),
             "params": {role: _params(models / role) for role in ("teacher", "student_init")}}
    write_atomic(stamp, json.dumps(facts, indent=2) + "\n")
    how = (f"loaded from {args.teacher_weights}" if args.teacher_weights else
           f"after {teacher['teacher_train_s']:.1f}s of training")
    print(f"prepared {args.work}: {facts['train_blocks']} train / {facts['val_blocks']} val blocks of "
          f"{task.context} tokens, teacher val loss {teacher['teacher_val_loss']:.4f} {how}", flush=True)
    return facts


def _params(folder: Path) -> int:
    """Parameters saved in a save_pretrained folder (a tied output layer is stored once: counted once)."""
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())


# contestants -------------------------------------------------------------------------------------------------------
def commands(args, facts: dict) -> dict[str, list[str]]:
    common = ["--data", facts["data"], "--teacher", facts["teacher"], "--student-init", facts["student_init"],
              "--device", args.device, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--seed", str(args.seed)]
    leankd = [sys.executable, str(PEERS / "lm_leankd_run.py")] + common
    return {
        "trl": [args.trl_python, str(PEERS / "lm_trl_run.py")] + common + ["--tokenizer", facts["tokenizer"]],
        "plain": [sys.executable, str(PEERS / "lm_plain_run.py")] + common,
        "leankd": leankd,
        "leankd_cached": leankd + ["--cached"],
    }


def run_all(args, facts: dict) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Every chosen contestant, round-robin with the order rotated per round, one at a time:
    ({name: [result per round]}, {name: why it failed})."""
    chosen, rounds, failed = args.only.split(","), {}, {}
    if REFERENCE in chosen and not Path(args.trl_python).exists():
        failed[REFERENCE] = (f"skipped: {args.trl_python} not found; make TRL's venv with "
                             "`bash benchmarks/peers/setup_trl_env.sh`")
        print(failed[REFERENCE], flush=True)
    cmds = commands(args, facts)
    names = [n for n in CONTESTANTS if n in chosen]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name in failed:
                continue
            log, out = args.work / f"{name}.r{r}.log", args.work / f"{name}.r{r}.json"
            out.unlink(missing_ok=True)
            code, wall = run(cmds[name] + ["--out", str(out)], log)
            if code != 0 or not out.exists():
                failed[name] = f"exit {code}, see {log}"
                print(f"{name} failed:\n{tail(log)}", flush=True)
                continue
            rounds.setdefault(name, []).append({**json.loads(out.read_text()), "process_wall_s": wall, "round": r,
                                                "position": order.index(name)})
    return rounds, failed


# summary -----------------------------------------------------------------------------------------------------------
def step_seconds(runs: list[dict]) -> tuple[float, float]:
    """(median s/step of the first epochs, median s/step of the later epochs) over all rounds; an epoch's s/step is
    its time over its steps. With one epoch, the first epoch's figure twice."""
    first = statistics.median(r["seconds_per_epoch"][0] / r["steps_per_epoch"] for r in runs)
    later = [s / r["steps_per_epoch"] for r in runs for s in r["seconds_per_epoch"][1:]]
    return first, statistics.median(later) if later else first


def step_median(runs: list[dict]) -> float | None:
    """Median single-step time after the first epoch, over all rounds, for contestants that time steps."""
    steps = [s for r in runs if r.get("seconds_per_step")
             for s in r["seconds_per_step"][r["steps_per_epoch"]:] or r["seconds_per_step"]]
    return statistics.median(steps) if steps else None


def summarize(name: str, runs: list[dict], reference: list[dict] | None) -> dict:
    first, rest = step_seconds(runs)
    head = runs[0]
    builds = [r["cache_build_s"] for r in runs if r.get("cache_build_s") is not None]
    row = {"contestant": name, "tool": head["tool"], "s_per_step": rest, "first_epoch_s_per_step": first,
           "tokens_per_s": head["tokens_per_step"] / rest, "step_median_s": step_median(runs),
           "val_loss": head["val_loss"], "val_loss_rounds": [r["val_loss"] for r in runs],
           "peak_rss_mb": head.get("peak_rss_mb"), "cache_build_s": statistics.median(builds) if builds else None,
           "student_init_sha": head.get("student_init_sha"),
           "process_wall_s": statistics.median(r["process_wall_s"] for r in runs)}
    row["x_vs_trl"] = step_seconds(reference)[1] / rest if reference else None
    return row


def full_run_estimate(s: dict) -> dict:
    """From a probe (the full run's models, context and batch, a few steps): the seconds `--mode cpu` would take.
    Per contestant: its s/step x the full run's steps, plus what its process spends outside its epochs (start-up,
    loading, validation, leankd's measurements and report: process wall time minus its timed epochs), x rounds;
    plus the teacher's training (its s/step x its steps). Machine load during the probe moves it as much as the
    timings themselves."""
    f = s["prepared"]
    steps = max(1, f["train_blocks_unlimited"] // s["batch_size"])
    per = {}
    for row in s["rows"]:
        if row.get("failed"):
            continue
        run = s["results"][row["contestant"]][0]
        outside = run["process_wall_s"] - sum(run["seconds_per_epoch"])
        per[row["contestant"]] = row["s_per_step"] * FULL["epochs"] * steps + outside
    teacher = (f["teacher_s_per_step"] or 0.0) * FULL["teacher_epochs"] * steps  # none when it was loaded
    return {"steps_per_epoch": steps, "teacher_s": teacher, "per_contestant_round_s": per,
            "total_s": teacher + FULL["rounds"] * sum(per.values())}


def fmt(v, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


NOTES = [
    ("Loss: 0.5 x forward KL(teacher || student) + 0.5 x next-token cross-entropy, per-token means, T = 1, fp32. "
     "TRL: GKDTrainer(lmbda=0, beta=0)'s own generalized_jsd_loss (= forward KL at beta 0) plus the CE half added "
     "in a compute_loss override (GKD has no CE term; trl.DistillationTrainer is on-policy only: its student "
     "generates what it trains on). leankd: distill.loss [forward_kl 0.5, ce 0.5]."),
    ("Optimizer: AdamW, the same lr, weight decay (not on biases/LayerNorm), gradient clip, cosine schedule with "
     "the same number of linear warm-up steps; each tool's own kernels (Trainer's default optim, torch's default "
     "for the plain loop, leankd's foreach on CPU). Batch order: leankd and the plain loop draw the same "
     "permutations (so their val losses check each other); TRL its Trainer's seeded RandomSampler."),
    ("leankd's figures come from `leankd run`'s run directory (student/metrics.jsonl, stage.json); its process also "
     "measures and writes the report after training (outside every timed figure, inside process wall time and "
     "peak RSS). The cached teacher's one pass over the training blocks is `cache build`, not in the epochs."),
]
TABLE_NOTE = ("s/step: each epoch's training time / its steps, median over the epochs after the first of all rounds "
              "(one epoch: that epoch); tokens/s = batch x context / s/step; x vs TRL divides TRL's s/step by the "
              "contestant's (above 1: faster). Val loss: nats per character over every val token after the last "
              "epoch (first round).")
TABLE_HEAD = ["| contestant | s/step | tokens/s | x vs TRL | 1st epoch s/step | final val loss | peak RSS MB | "
              "cache build (s) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]


def table_row(r: dict) -> str:
    if r.get("failed"):
        return f"| {r['contestant']} | {r['failed']} | | | | | | |"
    return (f"| {r['tool']} | {fmt(r['s_per_step'], '.4f')} | {fmt(r['tokens_per_s'], ',.0f')} | "
            f"{fmt(r['x_vs_trl'], '.2f', 'x')} | {fmt(r['first_epoch_s_per_step'], '.4f')} | "
            f"{fmt(r['val_loss'], '.4f')} | {fmt(r['peak_rss_mb'], '.0f')} | {fmt(r['cache_build_s'])} |")


def markdown(s: dict) -> str:
    f = s["prepared"]
    head = [f"# Causal-LM KD side by side: GPT teacher -> GPT student, Tiny Shakespeare characters ({s['mode']} mode)",
            "", f"- machine: {s['machine']}", f"- command: `{s['command']}`",
            (f"- data: {f['train_blocks']} training blocks of {f['context']} tokens ({f['vocab_size']} characters), "
             f"{f['val_blocks']} val blocks; batch {s['batch_size']} ({s['steps_per_epoch']} steps per epoch, "
             f"{s['batch_size'] * f['context']:,} tokens a step), {s['epochs']} epoch(s), {s['rounds']} round(s), "
             "contestants one after another, order rotated each round"),
            (f"- teacher: gpt {f['teacher_kwargs']} ({f['params']['teacher']:,} parameters, val loss "
             f"{fmt(f['teacher_val_loss'], '.4f')}); student: gpt {f['student_kwargs']} "
             f"({f['params']['student_init']:,} parameters); same student init everywhere: {s['same_student_init']}"),
            ""]
    rows = [table_row(r) for r in s["rows"]]
    tail_lines = []
    if s.get("full_run_estimate"):
        e = s["full_run_estimate"]
        parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in e["per_contestant_round_s"].items())
        tail_lines = ["", (f"Estimated `--mode cpu` duration from this probe: {e['total_s'] / 60:.0f} min (teacher "
                           f"{e['teacher_s'] / 60:.1f} min; per round, minutes: {parts}; {FULL['rounds']} rounds of "
                           f"{FULL['epochs']} x {e['steps_per_epoch']} steps).")]
    return "\n".join(head + TABLE_HEAD + rows + ["", TABLE_NOTE, ""] + [f"- {n}" for n in NOTES] + tail_lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def machine(device: str) -> str:
    import torch

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({where})"


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = prepare(args)
    rounds, failed = run_all(args, facts)
    chosen = args.only.split(",")
    rows = [{"contestant": name, "failed": why} for name, why in failed.items()]
    rows += [summarize(name, rounds[name], rounds.get(REFERENCE)) for name in chosen if name in rounds]
    rows.sort(key=lambda r: CONTESTANTS.index(r["contestant"]))
    shas = {r["student_init_sha"] for runs in rounds.values() for r in runs}
    summary = {
        "mode": args.mode, "machine": machine(args.device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "seed": args.seed, "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds,
        "steps_per_epoch": max(1, facts["train_blocks"] // args.batch_size), "prepared": facts,
        "same_student_init": len(shas) == 1 if rounds else None, "rows": rows, "results": rounds,
    }
    if args.mode == "probe" and rows:
        summary["full_run_estimate"] = full_run_estimate(summary)
    name = "lm_peers" if args.mode == "cpu" else f"lm_peers_{args.mode}"
    write_atomic(args.out / f"{name}.json", json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    write_atomic(args.out / f"{name}.md", text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
