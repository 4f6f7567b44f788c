"""Causal language modelling (`data.task: causal_lm`): predict every next token of running text.

How it fits the one training loop: the tokenized training part is cut into fixed blocks of `context + 1` tokens that
overlap by one (block i starts at token i·context); a batch's inputs are [B, context] token ids and its targets the
next token of every position, flattened to [B·context]. `forward` returns the logits of those positions as
[B·context, V]. So cross-entropy is the per-token mean, every logit loss (`kd`, `forward_kl`, `reverse_kl`, `jsd`,
`skew_kl`, ...) compares teacher and student token by token, and the live teacher, the teacher cache (one row per
training token), precision, accumulation, torchrun and `--resume` work unchanged. A batch's size is its number of
tokens, so the loop's samples/s is tokens/s.

Blocks are fixed (no random offsets per epoch): a cached teacher's logits at a position depend on the tokens before it
in its block, so the student must see the very blocks the teacher labelled; the order of blocks is reshuffled every
epoch.

Quality (`quality`, also the per-epoch validation): loss in nats per token, perplexity, next-token accuracy and bits
per character (nats per token x tokens per character / ln 2: comparable across tokenizers; for characters it is the
loss in bits). Accumulated batch by batch (`running_metrics`): a split's [tokens, V] logits are never held at once.
"""
from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..core.task import Batch, Task
from ..errors import DataError, ModelError

SPLITS = ("train", "val", "test")
# the report's generation figures: a fixed prompt from the evaluation text, a fixed seed (measured, never trained on)
PROMPT_TOKENS, GENERATED_TOKENS, SAMPLE_TOKENS, SAMPLE_TEMPERATURE, SAMPLE_SEED = 16, 32, 200, 0.8, 0
LOGIT_BUDGET = 1 << 26  # logits (floats) of one evaluation or cache batch: 256 MB in fp32


class TokenBlocks:
    """One part's token ids on the device, read as blocks of `context + 1` tokens starting at `starts` (by default
    every `context` tokens: consecutive blocks share one token; data.limit_* keeps a subset, sequence-level KD adds
    the teacher's continuations as blocks of their own after the text)."""

    def __init__(self, ids: Tensor, context: int, chars: int, starts: Optional[Tensor] = None):
        self.ids, self.context, self.chars = ids, context, chars
        total = max(0, (len(ids) - 1) // context)
        self.starts = (torch.arange(total, device=ids.device) * context if starts is None
                       else starts.to(ids.device))
        self.offsets = torch.arange(context + 1, device=ids.device)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def subset(self, keep: Tensor) -> "TokenBlocks":
        return TokenBlocks(self.ids, self.context, self.chars, self.starts[keep.to(self.starts.device)])

    def with_windows(self, windows: Tensor) -> "TokenBlocks":
        """These blocks plus `windows` [N, context + 1] (token ids) as blocks of their own."""
        n, width = windows.shape
        if width != self.context + 1:
            raise ValueError(f"extra blocks have {width} tokens, not context + 1 = {self.context + 1}")
        ids = torch.cat([self.ids, windows.to(self.ids.device, torch.long).reshape(-1)])
        starts = torch.cat([self.starts, len(self.ids) + torch.arange(n, device=self.ids.device) * width])
        return TokenBlocks(ids, self.context, self.chars, starts)

    def batch(self, idx: Tensor) -> Batch:
        """Blocks `idx` (positions in `starts`): inputs [b, context], targets [b·context], index = idx."""
        window = self.ids[self.starts[idx][:, None] + self.offsets]
        return Batch(window[:, :-1], window[:, 1:].reshape(-1), idx)


class RunningLM:
    """Token-weighted sums of one split's evaluation, so no [tokens, V] tensor is ever kept (see module doc)."""

    def __init__(self, chars_per_token: float):
        self.nats, self.correct, self.tokens = 0.0, 0, 0
        self.chars_per_token = chars_per_token

    def add(self, logits: Tensor, targets: Tensor) -> None:
        logits, targets = logits.float(), targets.to(logits.device)
        self.nats += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        self.correct += int((logits.argmax(-1) == targets).sum())
        self.tokens += int(targets.numel())

    def result(self) -> dict:
        if not self.tokens:
            return {"loss": None, "accuracy": None, "perplexity": None, "bpc": None, "num_samples": 0}
        loss = self.nats / self.tokens
        return {"loss": loss, "accuracy": self.correct / self.tokens, "perplexity": math.exp(min(loss, 700.0)),
                "bpc": loss / self.chars_per_token / math.log(2), "num_samples": self.tokens}


class CausalLMTask(Task):
    kind = "causal_lm"
    supports_views = True  # text is not augmented: a teacher cache holds one view, a row per training token
    max_views = 1

    def __init__(self, parts: dict[str, TokenBlocks], tokenizer, device: torch.device, info: Optional[dict] = None,
                 notes: Optional[list[str]] = None):
        if not len(parts.get("train", ())):
            raise DataError("a causal_lm task needs training text")
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.context = parts["train"].context
        self.num_classes = tokenizer.size
        self.class_names = []  # token ids are not classes the report lists
        self.splits = {name: blocks for name, blocks in parts.items() if len(blocks)}
        self.eval_split = next(s for s in ("test", "val", "train") if s in self.splits)
        self.info = dict(info or {})
        self.notes = list(notes or [])
        if self.eval_split == "train":
            self.notes.append("no validation or test text: quality is measured on the TRAINING text")
        self.samples_per_example = self.context  # a batch of blocks counts its tokens (tokens/s in the report)
        self.budget_blocks: Optional[int] = None  # steps per epoch counted on this many blocks (seq-KD's mix)
        self.policy = None  # on-policy KD: a leankd.lm.onpolicy.Policy that rewrites a share of the batches

    # data ----------------------------------------------------------------------------------------------------
    def split_size(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Shuffled blocks, a fresh seeded order every epoch (the same one on --resume); with a `policy` (on-policy
        KD) a share of the batches continued by the student being trained."""
        train = self.splits["train"]
        g = torch.Generator(device=self.device)
        g.manual_seed(seed * 1_000_003 + epoch)
        steps = self.steps_per_epoch(batch_size)
        order = torch.randperm(len(train), device=self.device, generator=g)
        if len(order) < batch_size:  # a split smaller than one batch: repeat it
            order = order.repeat(-(-batch_size // len(order)))
        for i in range(steps):
            batch = train.batch(order[i * batch_size:(i + 1) * batch_size])
            yield batch if self.policy is None else self.policy(batch, epoch, i, seed)

    def steps_per_epoch(self, batch_size: int) -> int:
        """As every task, on the real training blocks: sequence-level KD's extra blocks change what an epoch
        holds, not how many steps it takes (the same budget as the baseline)."""
        n = self.budget_blocks if self.budget_blocks is not None else self.split_size("train")
        return max(1, n // batch_size) if n >= batch_size else 1

    def with_extra_blocks(self, windows: Tensor) -> "CausalLMTask":
        """A copy whose training blocks are the text's plus `windows` [N, context + 1] (the teacher's continuations:
        sequence-level KD), for the text's number of steps per epoch; validation and test stay."""
        task = copy.copy(self)
        task.splits = {**self.splits, "train": self.splits["train"].with_windows(windows)}
        task.budget_blocks = len(self.splits["train"])
        return task

    def with_policy(self, policy) -> "CausalLMTask":
        """A copy whose training batches go through `policy` (on-policy KD); everything else stays."""
        task = copy.copy(self)
        task.policy = policy
        return task

    def _blocks_per_batch(self, batch_size: int) -> int:
        """Evaluation and cache batches are sized in blocks by their callers (256 and more); a batch's logits are
        blocks x context x vocabulary floats, so they are capped at LOGIT_BUDGET (a GPT-2 vocabulary at context
        1,024: one block a batch, not 256 = 53 GB)."""
        return max(1, min(batch_size, LOGIT_BUDGET // (self.context * self.num_classes)))

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """What a teacher cache labels: every training block once, in order."""
        return self.eval_batches("train", batch_size)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        data = self.splits[split]
        for chunk in torch.arange(len(data), device=self.device).split(self._blocks_per_batch(batch_size)):
            yield data.batch(chunk)

    def shard_batch(self, batch: Batch, part: int, parts: int) -> Batch:
        """A share of the batch's blocks, with their tokens' targets (context per block)."""
        from ..core.dist import shard_bounds

        if parts == 1:
            return batch
        start, end = shard_bounds(int(batch.inputs.shape[0]), part, parts)
        per = int(batch.inputs.shape[1])
        return Batch(batch.inputs[start:end], batch.targets[start * per:end * per],
                     None if batch.index is None else batch.index[start:end])

    def cache_size(self) -> int:
        return len(self.splits["train"]) * self.context

    def cache_rows(self, index: Tensor) -> Tensor:
        """Rows of blocks `index`: block b's tokens are rows b·context .. b·context + context - 1."""
        return ((index * self.context)[:, None] + torch.arange(self.context, device=index.device)).reshape(-1)

    def example_inputs(self, batch_size: int) -> Any:
        data = self.splits[self.eval_split]
        idx = torch.arange(batch_size, device=self.device) % len(data)
        return data.batch(idx).inputs

    def describe(self) -> dict:
        return {"num_classes": None, "classes": [], "train_size": self.split_size("train"),
                "val_size": self.split_size("val"), "eval_split": self.eval_split,
                "eval_size": self.split_size(self.eval_split), "primary_metric": self.primary_metric(),
                "vocab_size": self.num_classes, "context": self.context, "sample_unit": "tokens",
                # the rows the report's main table shows for this task: (quality key, label, decimals)
                "quality_rows": [["loss", "loss (nats/token)", 4], ["perplexity", "perplexity", 3],
                                 ["bpc", "bits per character", 4], ["accuracy", "next-token accuracy", 4]],
                **self.info}

    def summary(self) -> str:
        tokens = " / ".join(f"{self.splits[s].tokens:,} {s}" for s in SPLITS if s in self.splits)
        return (f"{tokens} tokens in blocks of {self.context} ({self.split_size('train'):,} training blocks), "
                f"{self.tokenizer.describe()}")

    def primary_metric(self) -> dict:
        """The loss in nats per token, lower is better. The report states gains in points (x 100), so one point is
        0.01 nats: the label says so."""
        return {"name": "loss", "higher_is_better": False, "label": "loss (nats/token; 1 point = 0.01 nats)",
                "also": ["perplexity", "bpc"]}

    @property
    def probe_classes(self) -> bool:
        return False  # next tokens are not classes a linear probe ranks teacher layers by

    # model ---------------------------------------------------------------------------------------------------
    def model_defaults(self) -> dict:
        return {"context": self.context}

    def prepare_model(self, model: nn.Module) -> None:
        """Refuse, before anything trains, a model that is not a causal LM of this vocabulary and context; a causal-LM
        checkpoint whose vocabulary is padded past the tokenizer is trimmed to it (`CausalLM.limit_vocab`)."""
        context = getattr(model, "context", None)
        if isinstance(context, int) and context < self.context:
            raise ModelError(f"{type(model).__name__} reads at most {context} positions, but data.lm.context is "
                             f"{self.context}: lower data.lm.context or build the model with context: {self.context}")
        probe = torch.zeros(1, min(self.context, 8), dtype=torch.long)  # token 0: valid for any vocabulary size
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()
                device = next(iter(model.parameters()), torch.empty(0)).device
                out = model(probe.to(device))
        except Exception as e:  # noqa: BLE001 - any failure here means the model does not take token ids
            raise ModelError(f"{type(model).__name__} does not run on token ids [batch, positions] ({e}): a causal_lm "
                             "task needs a causal language model (e.g. gpt, lm_small, or hf:FOLDER of a "
                             "...ForCausalLM checkpoint)") from None
        finally:
            model.train(was_training)
        out = getattr(out, "logits", out)
        want = (1, probe.shape[1], self.num_classes)
        padded = isinstance(out, Tensor) and out.dim() == 3 and out.shape[-1] > self.num_classes
        if padded and callable(getattr(model, "limit_vocab", None)):
            # an embedding table padded past the tokenizer (Pythia, Qwen2.5): its extra rows are never a next token
            model.limit_vocab(self.num_classes)
            return
        if not isinstance(out, Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            vocab = (f"; its vocabulary has {got[-1]} tokens, the data's tokenizer ({self.tokenizer.describe()}) "
                     f"{self.num_classes}: teacher and student must share the data's tokenizer"
                     + (" (a larger, padded vocabulary is accepted from a causal-LM checkpoint, hf:FOLDER, or a "
                        "registered LM, whose extra logits are dropped)" if padded else "")
                     if isinstance(out, Tensor) and out.dim() == 3 else "")
            raise ModelError(f"{type(model).__name__} is not a causal language model of this data: on token ids of "
                             f"shape {tuple(probe.shape)} it returns {got}, not logits of shape {want}{vocab}")

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        logits = model(inputs)
        logits = getattr(logits, "logits", logits)
        return logits.reshape(-1, logits.shape[-1])

    def prompt_ids(self, tokens: int = PROMPT_TOKENS) -> Tensor:
        """The fixed prompt of the samples and the generation timing: the start of the evaluation text, 8 rows (the
        timing's batch of 8 reads one each)."""
        data = self.splits[self.eval_split]
        return data.batch(torch.arange(8, device=self.device) % len(data)).inputs[:, :tokens].cpu()

    def joint_measurements(self, models: dict) -> dict[str, dict]:
        """Per generated token CPU latency with the KV cache (batch 1 and 8, greedy, every model interleaved) and one
        sampled continuation of the same prompt per model, joined as each model's `generation` block."""
        from ..lm.generate import generate, token_latency

        prompt = self.prompt_ids()
        timed = token_latency(models, prompt, batch_sizes=(1, 8), new_tokens=GENERATED_TOKENS)
        out = {}
        for role, model in models.items():
            ids = generate(model, prompt[:1], SAMPLE_TOKENS, temperature=SAMPLE_TEMPERATURE, seed=SAMPLE_SEED)
            out[role] = {"generation": {**timed[role], "prompt": self.tokenizer.decode(prompt[0].tolist()),
                                        "sample": self.tokenizer.decode(ids[0, prompt.shape[1]:].tolist()),
                                        "sample_seed": SAMPLE_SEED, "sample_temperature": SAMPLE_TEMPERATURE}}
        return out

    def dynamic_dims(self) -> dict[int, str]:
        return {0: "batch", 1: "length"}

    def deploy_metadata(self, model: nn.Module) -> dict[str, Any]:
        """The tokenizer (saved in the run as lm_tokenizer.json), its vocabulary and the context the model was
        trained on: the inputs are token ids, the outputs next-token logits over that vocabulary."""
        return {**super().deploy_metadata(model), "tokenizer": f"{self.tokenizer.describe()} (lm_tokenizer.json)",
                "vocab_size": self.num_classes, "context": self.context}

    def save(self, run_dir) -> None:
        self.tokenizer.save(Path(run_dir) / "lm_tokenizer.json")

    # quality -------------------------------------------------------------------------------------------------
    def chars_per_token(self, split: str) -> float:
        data = self.splits.get(split)
        return data.chars / max(data.tokens, 1) if data is not None else 1.0

    def running_metrics(self, split: str) -> RunningLM:
        return RunningLM(self.chars_per_token(split))

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        """Loss, perplexity and accuracy of a batch's token logits (bits per character of the evaluation part)."""
        running = RunningLM(self.chars_per_token(self.eval_split))
        running.add(logits, targets)
        return running.result()


def build_lm_task(cfg, device: torch.device, seed: int, channels_last: bool = False) -> CausalLMTask:
    """`data.source`: a .txt / .jsonl file or a folder of them; parts cut in order train | val | test
    (data.val_fraction, data.lm.test_fraction), tokenized by data.lm.tokenizer, packed into blocks of data.lm.context."""
    from ..data.lm import build_tokenizer, read_corpus, split_text

    lm = cfg.lm
    text, files = read_corpus(str(cfg.source), lm.format, lm.text_column, lm.encoding)
    parts = split_text(text, cfg.val_fraction, lm.test_fraction)
    tokenizer = build_tokenizer(lm.tokenizer, lm.vocab_size, parts)
    notes: list[str] = []
    blocks = {}
    for name in SPLITS:
        ids = torch.tensor(tokenizer.encode(parts[name]), dtype=torch.long)
        wanted = {"train": True, "val": cfg.val_fraction > 0, "test": lm.test_fraction > 0}[name]
        if wanted and len(ids) < lm.context + 1:
            setting = {"train": "lower data.val_fraction / data.lm.test_fraction",
                       "val": "raise data.val_fraction", "test": "raise data.lm.test_fraction"}[name]
            raise DataError(f"data.lm.context is {lm.context} tokens, but the {name} part of {cfg.source} has only "
                            f"{len(ids)} tokens ({len(parts[name])} characters), less than one block of "
                            f"{lm.context + 1}: lower data.lm.context, {setting}, or give more text")
        blocks[name] = TokenBlocks(ids.to(device), lm.context, len(parts[name]))
    if getattr(tokenizer, "kind", "") == "chars" and tokenizer.symbols[-1] == "\ufffd":
        notes.append("some validation/test characters never occur in the training part: they read as one unknown "
                     "symbol")
    if cfg.limit_train is not None and cfg.limit_train < len(blocks["train"]):
        g = torch.Generator().manual_seed(seed + 1)
        keep = torch.randperm(len(blocks["train"]), generator=g)[:cfg.limit_train].sort().values
        blocks["train"] = blocks["train"].subset(keep)
        notes.append(f"data.limit_train: {cfg.limit_train} training blocks of {lm.context} tokens, a random subset")
    if cfg.limit_test is not None and cfg.limit_test < len(blocks["test"]):
        blocks["test"] = blocks["test"].subset(torch.arange(cfg.limit_test))
        notes.append(f"data.limit_test: quality on the first {cfg.limit_test} test blocks")
    digest = hashlib.sha256(text.encode())
    digest.update(tokenizer.identity().encode())
    info = {"source": str(cfg.source), "files": len(files), "fingerprint": digest.hexdigest()[:16],
            "tokenizer": tokenizer.describe(), "tokenizer_id": tokenizer.identity(),
            "tokens": {name: b.tokens for name, b in blocks.items()},
            "characters": {name: len(parts[name]) for name in SPLITS},
            "split_method": {"method": "contiguous", "unit": "characters",
                             "detail": "train, then val, then test: consecutive parts of the text, cut before "
                                       "tokenizing (the tokenizer is fitted on the training part only)",
                             "examples": {name: len(b) for name, b in blocks.items()}}}
    return CausalLMTask(blocks, tokenizer, device, info=info, notes=notes)
