"""Text classification: GLUE-style tables tokenized once with the model's own fast tokenizer, held on the device as
token-id matrices, batched with dynamic padding and length bucketing.

Why bucketing: SST-2 phrases average ~13 tokens (p95 33); padding every batch to 128 would spend ~90 % of a
transformer's compute on padding. Training batches are drawn from a seeded shuffle, grouped by length inside
windows of `bucket_batches` batches (so a batch holds similar lengths but the order stays random), and padded to
their own longest row. Evaluation batches run in length order; targets travel with their batch, so metrics do not
care about the order, and `Batch.index` says which rows a batch holds (what the teacher cache keys on).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import DataError
from .base import Batch, Task


@dataclass
class Encoded:
    """One split's token ids, padded to the split's longest row (int32, on the device), and each row's length."""

    ids: Tensor  # [N, L_max]
    lengths: Tensor  # [N]
    type_ids: Optional[Tensor] = None  # [N, L_max] segment ids of sentence pairs (BERT's token_type_ids)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def encode(tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int, device: torch.device) -> Encoded:
    """Tokenize once, truncating to `max_length`; returns padded int32 matrices (pad id from the tokenizer)."""
    out = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False,
                    return_token_type_ids=pairs is not None, return_attention_mask=False)
    rows = out["input_ids"]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    width = int(lengths.max()) if len(rows) else 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.int32)
    types = torch.zeros((len(rows), width), dtype=torch.int32) if pairs is not None else None
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        if types is not None:
            t = out["token_type_ids"][i]
            types[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
    return Encoded(ids.to(device), lengths.to(device), None if types is None else types.to(device))


class TextTask(Task):
    kind = "text_classification"
    supports_views = True
    max_views = 1  # no augmentation: every view is the same text, so a cache needs one view

    def __init__(self, splits: dict[str, tuple[Encoded, Tensor]], num_classes: int, class_names: list[str],
                 device: torch.device, info: Optional[dict] = None, bucket_batches: int = 50):
        if "train" not in splits:
            raise ValueError("a TextTask needs a 'train' split")
        self.splits = splits
        self.num_classes, self.class_names = int(num_classes), list(class_names)
        self.device = torch.device(device)
        self.info = info or {}
        self.notes: list[str] = []
        self.bucket_batches = bucket_batches
        self.eval_split = next(s for s in ("test", "val", "train") if s in splits)

    def split_size(self, split: str) -> int:
        return len(self.splits[split][1]) if split in self.splits else 0

    # batches ---------------------------------------------------------------------------------------------------
    def batch(self, split: str, idx: Tensor) -> Batch:
        """Rows `idx` of a split, padded to their longest row: BERT-style inputs (int64, on the device)."""
        enc, y = self.splits[split]
        width = int(enc.lengths[idx].max())
        ids = enc.ids[idx, :width].long()
        mask = (torch.arange(width, device=self.device)[None, :] < enc.lengths[idx][:, None]).long()
        inputs = {"input_ids": ids, "attention_mask": mask}
        if enc.type_ids is not None:
            inputs["token_type_ids"] = enc.type_ids[idx, :width].long()
        return Batch(inputs, y[idx], idx)

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Full batches of similar lengths in random order; `view` changes nothing (text is not augmented)."""
        enc, _ = self.splits["train"]
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n = len(enc)
        order = torch.randperm(n, generator=g)
        steps = self.steps_per_epoch(batch_size)
        size = min(batch_size, n)
        order = order[:steps * size]
        lengths = enc.lengths.cpu()[order]
        window = size * self.bucket_batches
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[torch.sort(lengths[start:start + window], stable=True).indices]
            batches += list(chunk.split(size))
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield self.batch("train", batches[b].to(self.device))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        enc, _ = self.splits[split]
        order = torch.sort(enc.lengths.cpu(), stable=True).indices
        for chunk in order.split(batch_size):
            yield self.batch(split, chunk.to(self.device))

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """What the teacher cache labels: the training split in length order (the same for every view)."""
        return self.eval_batches("train", batch_size)

    def example_inputs(self, batch_size: int) -> Any:
        """`batch_size` rows of typical length (nearest the median of the evaluation split), for FLOPs and latency:
        a latency figure should describe a typical sentence, not whichever came first."""
        enc, _ = self.splits[self.eval_split]
        median = enc.lengths.float().median()
        order = torch.argsort((enc.lengths.float() - median).abs(), stable=True)
        idx = order[:batch_size]
        if len(idx) < batch_size:
            idx = idx.repeat(-(-batch_size // len(idx)))[:batch_size]
        return self.batch(self.eval_split, idx).inputs

    # model -----------------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        out = model(**inputs)
        return out.logits if hasattr(out, "logits") else out

    def dynamic_dims(self) -> dict[int, str]:
        return {0: "batch", 1: "sequence"}  # dynamic padding: every batch has its own length


def token_stats(enc: Encoded) -> dict:
    lengths = enc.lengths.float().cpu()
    return {"mean_tokens": round(float(lengths.mean()), 2), "p95_tokens": float(torch.quantile(lengths, 0.95)),
            "max_tokens": int(lengths.max())}


def load_tokenizer(path: str):
    """The fast tokenizer saved with a local Hugging Face checkpoint; never downloads."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise DataError(f"tokenizer folder {path!r} does not exist: give a local Hugging Face checkpoint folder "
                        "(with tokenizer.json or vocab.txt), e.g. the teacher's")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load a tokenizer from {path}: {e}") from None


def build_text_task(cfg, device: torch.device, seed: int, channels_last: bool = False) -> TextTask:
    """`data.source` is a folder with train (and dev/validation, test) files, or one train file. The dev file, when
    there is one, is the validation split (GLUE: train on train, report dev with `data.eval_split: val`); else
    `val_fraction` of train is held out, stratified."""
    from ..data.text import class_names_of, encode_labels, find_split_files, read_table
    from ..models.hf import resolve_checkpoint
    from .splits import choose_eval_split, limit_test, split_train

    text = cfg.text
    files = find_split_files(Path(cfg.source))
    tables = {split: read_table(path, text.format, text.text_column, text.pair_column, text.label_column)
              for split, path in files.items()}
    classes = class_names_of(tables["train"].labels)
    if len(classes) < 2:
        raise DataError(f"{files['train']}: the label column holds one class ({classes}); classification needs two")
    labels = {split: torch.tensor(encode_labels(t, classes), dtype=torch.long) for split, t in tables.items()}
    notes: list[str] = []
    rows: dict[str, torch.Tensor] = {}
    if "val" in tables:  # a dev file: the whole train file trains (limit_train still applies)
        held = cfg.model_copy(update={"val_fraction": 0.0})
        rows["train"], _ = split_train(labels["train"], held, seed, notes, unit="sentences")
        rows["val"] = torch.arange(len(labels["val"]))
    else:
        rows["train"], rows["val"] = split_train(labels["train"], cfg, seed, notes, unit="sentences")
        tables["val"], labels["val"] = tables["train"], labels["train"]
    if "test" in tables:
        rows["test"] = limit_test(labels["test"], cfg, seed, notes, unit="sentences")
    tokenizer_path = str(resolve_checkpoint(text.tokenizer))
    tokenizer = load_tokenizer(tokenizer_path)
    splits = {}
    for split, idx in rows.items():
        if len(idx) == 0:
            continue
        table, keep = tables[split], idx.tolist()
        pairs = [table.pairs[i] for i in keep] if table.pairs is not None else None
        enc = encode(tokenizer, [table.texts[i] for i in keep], pairs, text.max_length, device)
        splits[split] = (enc, labels[split][idx].to(device))
    eval_split = choose_eval_split(cfg, "val" in splits, "test" in splits, notes)
    info = {"source": cfg.source, "fingerprint": _files_fingerprint(list(files.values()), Path(tokenizer_path)),
            "files": {s: str(p) for s, p in files.items()}, "tokenizer": tokenizer_path,
            "max_length": text.max_length, **{f"train_{k}": v for k, v in token_stats(splits["train"][0]).items()}}
    task = TextTask(splits, len(classes), classes, device, info=info, bucket_batches=text.bucket_batches)
    task.eval_split = eval_split
    task.notes += notes
    truncated = int((splits["train"][0].lengths >= text.max_length).sum())
    if truncated:
        task.notes.append(f"{truncated} training texts were truncated to data.text.max_length = {text.max_length} "
                          "tokens")
    return task


def _files_fingerprint(files: list[Path], tokenizer_dir: Path) -> str:
    """Content hash of the data files and the tokenizer's files: an edited file retrains, a moved one does not."""
    import hashlib

    h = hashlib.sha256()
    tokenizer_files = [p for p in sorted(tokenizer_dir.iterdir()) if p.name in (
        "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "merges.txt", "vocab.json")]
    for path in list(files) + tokenizer_files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
