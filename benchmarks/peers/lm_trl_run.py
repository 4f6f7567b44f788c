"""Contestant "trl" of benchmarks/lm_peers.py: TRL's GKDTrainer (lmbda=0, beta=0) plus the cross-entropy half.

Run from TRL's own venv (benchmarks/peers/setup_trl_env.sh) as its users would run it.

Which TRL trainer, and why (read in trl 1.16.0's source):
- `trl.DistillationTrainer` (trainer/distillation_trainer.py, promoted to the stable API) is on-policy only: its
  dataset must have a "prompt" column and the student *generates* every completion it is trained on (lmbda-free;
  `beta` picks forward/reverse KL/JSD). It never trains on the dataset's own text, so it cannot run "forward KL on
  Tiny Shakespeare's blocks".
- `trl.experimental.gkd.GKDTrainer` (an SFTTrainer) trains on the batches its collator gives; `lmbda` is the chance
  that a step swaps them for student samples (`random.random() <= lmbda`: 0 means never) and `seq_kd` for teacher
  samples (off). Its loss is `generalized_jsd_loss` of the shifted student and teacher logits over positions whose
  label is not -100; at `beta=0` that is `F.kl_div(log p_s, log p_t, log_target=True)` = KL(p_t || p_s), forward
  KL per token, at temperature 1 (compute_loss passes no temperature: GKDConfig.temperature is for sampling only).
  So GKDTrainer(lmbda=0, beta=0) is TRL's "forward KL on the given text" — but with no cross-entropy term.
- The shared loss is 0.5 forward KL + 0.5 CE, so `GKDWithCE` below adds the CE half in a compute_loss override that
  calls GKD's own compute_loss first (its forward passes, its KL) and reuses the student logits it returns: the
  smallest change that gives the shared loss, one extra cross_entropy on logits already computed.

How the data goes in: the driver's blocks of context + 1 tokens as a `datasets.Dataset` of `input_ids`, and a
collator that stacks them (all blocks have one length: no padding), attention_mask all ones, labels = input_ids
with position 0 set to -100 (never a target after the causal shift; so transformers' token count, which feeds
`num_items_in_batch`, is exactly batch x context). GKD's default ChatML collator expects "messages"; a language-model
collator of one's own is what its docstring offers for other data. The models read context + 1 positions (the
driver builds every model with that position table); the last position's logits are dropped by the shift.
Tokenizer: the driver's character tokenizer folder (a PreTrainedTokenizerFast of leankd's symbols), as
processing_class; nothing is tokenized here, the blocks are the token ids.

Settings given explicitly because TRL's SFT-family defaults differ from TrainingArguments' (trainer/base_config.py):
bf16 (True unless fp16) -> False, fp32 like everyone; gradient_checkpointing (True) -> False; learning_rate 2e-5 ->
the shared one; logging every 10 steps -> off (no one else logs per step). Trainer's own optimizer (AdamW, its
default kernels, no decay on biases/LayerNorm), its cosine schedule with `warmup_steps` (from lr 0; leankd's ramp
starts at lr/W: one step apart), max_grad_norm = the shared clip, its RandomSampler order (seeded), full batches.

Timing: a TrainerCallback stamps on_epoch_begin/end and on_step_begin/end (CUDA synchronised); val loss after
training with lm_common.val_loss, outside the timing.

    benchmarks/peers/.venv-trl/bin/python benchmarks/peers/lm_trl_run.py --data blocks.pt --teacher teacher/ \
        --student-init student_init/ --tokenizer tokenizer/ --epochs 3 --out trl.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_common as lc  # noqa: E402

try:
    import trl
    from trl.experimental.gkd import GKDConfig, GKDTrainer
except ImportError:
    raise SystemExit("trl is not installed in this interpreter: run this script with "
                     "benchmarks/peers/.venv-trl/bin/python (made by setup_trl_env.sh)") from None
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402


class GKDWithCE(GKDTrainer):
    """GKD's forward KL (lmbda=0, beta=0) mixed with next-token cross-entropy: alpha * KL + (1 - alpha) * CE."""

    def __init__(self, *args, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kl, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        logits, labels = outputs.logits[:, :-1, :].float(), inputs["labels"][:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=lc.IGNORE)
        loss = self.alpha * kl + (1.0 - self.alpha) * ce
        return (loss, outputs) if return_outputs else loss


def collate(rows: list[dict]) -> dict:
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    labels = ids.clone()
    labels[:, 0] = lc.IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class Clocks(TrainerCallback):
    """Stamps each epoch and each optimizer step; the Trainer calls these around its own loop."""

    def __init__(self, device: torch.device) -> None:
        self.epochs, self.steps = lc.Stopwatch(device), lc.Stopwatch(device)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epochs.start()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.stop()

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.stop()


def config(args, out_dir: str, warmup: int) -> GKDConfig:
    return GKDConfig(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup, lr_scheduler_type="cosine",
        max_grad_norm=args.grad_clip, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=args.device == "cpu", seed=args.seed, dataloader_drop_last=True,
        lmbda=0.0, beta=0.0, seq_kd=False)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    lc.add_common_args(p)
    p.add_argument("--tokenizer", required=True, help="character tokenizer folder written by lm_peers.py")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = lc.load_blocks(args.data)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    teacher = lc.load_causal_lm(args.teacher)
    student = lc.load_causal_lm(args.student_init)
    init_sha = lc.weights_sha(student)
    steps = lc.steps_per_epoch(len(data["train"]), args.batch_size)
    warmup = lc.warmup_steps(args.epochs * steps, args.warmup_fraction)
    clocks = Clocks(device)
    train = Dataset.from_dict({"input_ids": data["train"].tolist()})
    with tempfile.TemporaryDirectory(prefix="lm-trl-") as out_dir:
        trainer = GKDWithCE(model=student, teacher_model=teacher, args=config(args, out_dir, warmup),
                            train_dataset=train, data_collator=collate, processing_class=tokenizer,
                            callbacks=[clocks], alpha=args.alpha)
        trainer.train()
    loss = lc.val_loss(trainer.model, data["val"], device)
    payload = lc.result(f"TRL {trl.__version__} GKDTrainer (lmbda=0, beta=0) + CE", args, data, clocks.epochs.seconds,
                        loss, seconds_per_step=clocks.steps.seconds, student_init_sha=init_sha, warmup_steps=warmup,
                        optimizer=trainer.args.optim.value, trl_version=trl.__version__,
                        loss=f"{args.alpha:g}*gkd_jsd(beta=0) + {1 - args.alpha:g}*ce")
    lc.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
