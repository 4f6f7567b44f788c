"""Data, loss, timing and reporting shared by the causal-LM contestants of benchmarks/lm_peers.py.

Used by lm_plain_run.py, lm_trl_run.py and lm_leankd_run.py; it runs under leankd's venv and under TRL's own
(torch + transformers only, no leankd import), so every contestant reads, scores and times alike.

Why one module: the comparison is only fair if every contestant trains on the same token blocks, starts from the same
teacher and student weights and measures the same thing the same way:
- the data is the driver's `blocks.pt`: leankd's own causal_lm blocks of `context + 1` tokens (inputs = the first
  `context`, targets = the last `context`: one prediction per input position), train and val, as int64 tensors;
- `seconds_per_epoch`: wall time of each training epoch only (batches, teacher and student forward, backward, clip,
  optimizer and scheduler steps), CUDA synchronised at both ends; validation is outside it. The driver turns it into
  s/step (epoch time / steps in it), the one figure all four contestants can give: `leankd run` records epoch times,
  not step times. Contestants that can time single steps also give `seconds_per_step` (for the spread);
- `val_loss`: mean next-token cross-entropy in nats over every val token (all val blocks), after the last epoch;
- `student_init_sha`: a hash of the student's weights before training: equal across contestants = same init;
- `peak_rss_mb`: the process's peak resident set (VmHWM), model loading included.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import sync, write_json  # noqa: E402,F401  (the image and text peers' device sync and atomic JSON)
# `start()` / `stop()` around each timed span (an epoch or a step; `seconds` lists them): the text peers' timer
from text_common import EpochTimer as Stopwatch  # noqa: E402,F401

IGNORE = -100


def load_blocks(path: str) -> dict:
    """The driver's blocks.pt: {"train": [N, C+1] int64, "val": [M, C+1] int64, "context", "vocab_size", ...}."""
    return torch.load(path, map_location="cpu", weights_only=True)


def leankd_order(n: int, batch_size: int, epoch: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """The batches of block indices leankd's causal_lm task draws in `epoch` (CausalLMTask.train_batches): a
    permutation from a generator on the training device seeded seed * 1_000_003 + epoch, cut into full batches.
    The plain loop uses it so that it sees the very batches leankd sees (its val loss then checks leankd's)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, device=device, generator=g)
    steps = max(1, n // batch_size)
    if len(order) < batch_size:
        order = order.repeat(-(-batch_size // len(order)))
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only, as leankd (Task.steps_per_epoch) and the Trainer with dataloader_drop_last."""
    return max(1, n // batch_size)


def warmup_steps(total_steps: int, fraction: float) -> int:
    """The same integer number of linear warm-up steps for every contestant."""
    return round(fraction * total_steps)


def kd_ce_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * KL(p_teacher || p_student) + (1 - alpha) * CE, both the mean over tokens, T = 1, in fp32.
    `student`/`teacher`: [..., V] logits; `targets`: [...] token ids."""
    vocab = student.shape[-1]
    s = student.float().reshape(-1, vocab)
    t = teacher.detach().float().reshape(-1, vocab)
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    ce = F.cross_entropy(s, targets.reshape(-1))
    return alpha * kl + (1.0 - alpha) * ce


@torch.no_grad()
def val_loss(model, val: torch.Tensor, device: torch.device, batch_size: int = 256) -> float:
    """Mean next-token cross-entropy (nats) over every token of the val blocks; `model` is a HF ...ForCausalLM."""
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    for chunk in val.split(batch_size):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"))
        tokens += chunk[:, 1:].numel()
    model.train(was_training)
    return nats / max(tokens, 1)


def weights_sha(model) -> str:
    """Short hash of every tensor of a model's state dict (names sorted): equal means the same weights. Keys
    prefixed `hf.` (leankd's wrapper) hash like the bare Hugging Face model's."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state, key=lambda k: k.removeprefix("hf.")):
        h.update(name.removeprefix("hf.").encode())
        h.update(state[name].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_causal_lm(folder: str):
    """A model saved by the driver with save_pretrained (fp32, sdpa attention, no network)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="sdpa",
                                                dtype=torch.float32)


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB: VmHWM of /proc/self/status where there is one. Not getrusage's
    ru_maxrss: on Linux that survives fork + exec, so a contestant started by a driver that holds 1.7 GB (it trained
    the teacher) would report at least the driver's 1.7 GB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def result(tool: str, args, data: dict, seconds_per_epoch: list[float], final_val_loss: float, **extra) -> dict:
    import transformers

    return {
        "tool": tool,
        "seconds_per_epoch": seconds_per_epoch,
        "steps_per_epoch": steps_per_epoch(len(data["train"]), args.batch_size),
        "val_loss": final_val_loss,
        "val_bpc": final_val_loss / math.log(2),  # characters: one token per character
        "num_train_blocks": len(data["train"]),
        "num_val_blocks": len(data["val"]),
        "context": int(data["context"]),
        "tokens_per_step": args.batch_size * int(data["context"]),
        "peak_rss_mb": peak_rss_mb(),
        "device": args.device,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def add_common_args(p) -> None:
    """The arguments every causal-LM contestant takes, with the same defaults (the recipe of the comparison)."""
    p.add_argument("--data", required=True, help="blocks.pt written by benchmarks/lm_peers.py")
    p.add_argument("--teacher", required=True, help="teacher folder (save_pretrained) written by lm_peers.py")
    p.add_argument("--student-init", required=True, help="student folder (save_pretrained): the initial weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-fraction", type=float, default=0.1, help="of all optimizer steps, linear warm-up")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of forward KL; cross-entropy gets 1 - alpha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result JSON path (also printed to stdout)")
