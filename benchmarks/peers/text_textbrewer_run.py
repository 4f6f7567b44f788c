"""Contestant "textbrewer" of benchmarks/text_peers.py: TextBrewer 0.2.1.post1's GeneralDistiller.

Run from its own venv (benchmarks/peers/setup_textbrewer_env.sh) as its users would run it.

How TextBrewer is driven (its source, distiller_general.py / distiller_basic.py / distiller_utils.py):
- The adaptor returns {"logits": ..., "losses": ...}. GeneralDistiller's KD term reads `logits`; its hard-label
  term is `hard_label_weight * mean(results_S["losses"])`, so the cross-entropy comes from the student's own
  `outputs.loss` (the batch carries `labels`). An adaptor's `labels` key is read only by `probability_shift`, which
  is off: returning it would add no hard-label loss at all.
- `kd_loss_type="ce"` is soft cross-entropy at temperature T *without* a T^2 factor (losses.kd_ce_loss): at T = 2
  its KD gradient is a quarter of leankd's / the Trainer blog's KL * T^2 for the same 0.9 weight. That is the loss
  as TextBrewer ships it, kept; the report says so.
- The distiller is entered as a context (`with distiller:`), which puts the teacher in eval mode and the student in
  train mode, as TextBrewer's examples do; it moves neither model, so both are moved to the device here.
- Both models use eager attention: TextBrewer's attention losses read `output_attentions`, which needs it, so that
  is how its users load models; kept although this comparison distills logits only.
- Every epoch TextBrewer writes the student's state_dict to `output_dir` (its checkpoint; it always does) and a
  TensorBoard scalar per step to `log_dir`: both inside its epoch, as for its users. `checkpoint_save_s` in the
  JSON is one such save timed alone, to tell how much of the epoch it is.

Timing: the DataLoader is wrapped, not timed through TextBrewer's `callback`: the callback fires only after the
epoch's checkpoint and gives no epoch start. The wrapper's iterator starts the clock when TextBrewer begins an
epoch's `for` loop and stops it when the loop asks past the last batch, i.e. after the last step (and its
checkpoint). Dev accuracy is measured after training with text_common.evaluate, outside the timing.

Compatibility with torch 2.14 / transformers 5.23: TextBrewer imports and runs as released, with one workaround in
how batches are handed to it. `get_outputs_from_batch` calls `model(**batch)` only when `type(batch) is dict`;
anything else is unpacked positionally, `model(*batch)`. DataCollatorWithPadding returns a `BatchEncoding` (a
UserDict, not a dict), so the models would get the key strings as input_ids ("AttributeError: 'str' object has no
attribute 'size'"); the collate function therefore returns `dict(collator(rows))`. (Tuples in forward()'s argument
order, e.g. from a TensorDataset, are the other form it accepts.) Nothing else needed patching.

    benchmarks/peers/.venv-textbrewer/bin/python benchmarks/peers/text_textbrewer_run.py --data text.json \
        --teacher model.safetensors --epochs 2 --out textbrewer.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_common as tc  # noqa: E402

try:
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
except ImportError:
    raise SystemExit("textbrewer is not installed in this interpreter: run this script with "
                     "benchmarks/peers/.venv-textbrewer/bin/python (made by setup_textbrewer_env.sh)") from None
from transformers import AutoTokenizer, DataCollatorWithPadding, get_cosine_schedule_with_warmup  # noqa: E402

NO_DECAY = ("bias", "LayerNorm.weight")  # TextBrewer's examples (and BERT's) exempt these from weight decay


class TimedLoader:
    """A DataLoader whose every full pass is one timed epoch; TextBrewer needs only `len()` and iteration."""

    def __init__(self, loader: DataLoader, timer: tc.EpochTimer) -> None:
        self.loader, self.timer = loader, timer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.timer.start()
        yield from self.loader
        self.timer.stop()


def adaptor(batch, model_outputs) -> dict:
    """What GeneralDistiller reads from a model's output: logits (KD) and the model's own CE loss (hard labels)."""
    return {"logits": model_outputs.logits, "losses": model_outputs.loss}


def optimizer_for(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not any(k in n for k in NO_DECAY)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if any(k in n for k in NO_DECAY)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def train_loader(rows: list[dict], tokenizer, args) -> DataLoader:
    """Shuffled with a seeded generator, full batches only, each padded to its longest row (as a plain dict: see
    the module docstring on BatchEncoding)."""
    pad = DataCollatorWithPadding(tokenizer)
    return DataLoader(rows, batch_size=args.batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(args.seed), collate_fn=lambda batch: dict(pad(batch)))


def distill(teacher, student, loader: TimedLoader, args, work_dir: str) -> int:
    """GeneralDistiller over `loader` for args.epochs; returns the warm-up steps used."""
    train_config = TrainingConfig(device=args.device, log_dir=os.path.join(work_dir, "log"),
                                  output_dir=os.path.join(work_dir, "out"))
    distill_config = DistillationConfig(temperature=args.temperature, hard_label_weight=1.0 - args.alpha,
                                        kd_loss_type="ce", kd_loss_weight=args.alpha, intermediate_matches=[])
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=adaptor, adaptor_S=adaptor)
    total = args.epochs * len(loader)
    warmup = tc.warmup_steps(total)
    with distiller:
        distiller.train(optimizer_for(student, args.lr, args.weight_decay), loader, num_epochs=args.epochs,
                        scheduler_class=get_cosine_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": warmup, "num_training_steps": total})
    return warmup


def checkpoint_save_s(model: torch.nn.Module, work_dir: str) -> float:
    """One state_dict save as TextBrewer makes at every epoch's end, timed alone."""
    t0 = time.perf_counter()
    torch.save(model.state_dict(), os.path.join(work_dir, "probe.pkl"))
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tc.add_common_args(p)
    args = p.parse_args(argv)
    tc.quiet_transformers()
    device = torch.device(args.device)
    data = tc.load_data(args.data)
    train_rows, dev_rows = tc.features(data["train"]), tc.features(data["dev"])
    tokenizer = AutoTokenizer.from_pretrained(tc.minilm_folder(), local_files_only=True, use_fast=True)
    teacher = tc.load_teacher(args.teacher, attn_implementation="eager").to(device)
    student = tc.build_student(args.seed, attn_implementation="eager").to(device)
    head = tc.head_sha(student.classifier)
    timer = tc.EpochTimer(device)
    with tempfile.TemporaryDirectory(prefix="textbrewer-") as work_dir:
        warmup = distill(teacher, student, TimedLoader(train_loader(train_rows, tokenizer, args), timer), args,
                         work_dir)
        save_s = checkpoint_save_s(student, work_dir)
    accuracy = tc.evaluate(student, dev_rows, tokenizer, device)
    payload = tc.result(f"TextBrewer {textbrewer.__version__} GeneralDistiller", timer.seconds, accuracy, args, data,
                        student_head_sha=head, warmup_steps=warmup, checkpoint_save_s=save_s,
                        attn_implementation="eager",
                        loss=f"{args.alpha:g}*soft_ce(T={args.temperature:g}) + {1 - args.alpha:g}*ce (no T^2)")
    tc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
