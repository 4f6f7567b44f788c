"""Text classification: GLUE-style tables tokenized once per tokenizer the models need, held on the device as
token-id matrices, batched with dynamic padding and length bucketing.

Several tokenizations of the same text: the teacher reads sub-word ids from its own tokenizer, a BiLSTM student
reads word ids from a vocabulary built on the training data, another Hugging Face student may have its own
vocabulary. A batch carries every tokenization the task has prepared (`{key: {input name: tensor}}`), and
`model_inputs(model, inputs)` hands each model the one it reads (its `input_encoding` attribute: a tokenizer
folder, or "words"; models without one read the data's tokenizer). Rows, order and labels are shared, so a cached
teacher output lines up with a word-level student's batch.

Why bucketing: SST-2 phrases average ~13 tokens (p95 33); padding every batch to 128 would spend ~90 % of a
transformer's compute on padding. Training batches are drawn from a seeded shuffle, grouped by length inside
windows of `bucket_batches` batches (so a batch holds similar lengths but the order stays random), and padded to
their own longest row. Evaluation batches run in length order; targets travel with their batch, so metrics do not
care about the order, and `Batch.index` says which rows a batch holds (what the teacher cache keys on).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import DataError, ModelError
from ..kd.losses import UNLABELED  # the target of augmented texts: only the teacher's output teaches them
from .base import Batch, Task

WORDS = "words"  # the key of the word-vocabulary tokenization
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "merges.txt",
                   "vocab.json", "sentencepiece.bpe.model", "spiece.model")


@dataclass
class Encoded:
    """One split under one tokenization: ids padded to the split's longest row (int32, on the device), lengths."""

    ids: Tensor  # [N, L_max]
    lengths: Tensor  # [N]
    type_ids: Optional[Tensor] = None  # [N, L_max] segment ids of sentence pairs (BERT's token_type_ids)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


@dataclass
class TextSplit:
    """The raw texts of one split (kept so a tokenizer prepared later, or augmentation, can read them)."""

    texts: list[str]
    pairs: Optional[list[str]]
    labels: Tensor  # [N] long, on the device; UNLABELED for augmented texts


def encode(tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int, device: torch.device) -> Encoded:
    """Tokenize once, truncating to `max_length`; returns padded int32 matrices (pad id from the tokenizer). The
    augmentation's `[MASK]` is spelled as this tokenizer's mask token."""
    from ..data.words import MASK

    mask = tokenizer.mask_token or tokenizer.unk_token
    if mask and mask != MASK:
        texts = [t.replace(MASK, mask) for t in texts]
        pairs = [p.replace(MASK, mask) for p in pairs] if pairs is not None else None
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


def tokenizer_key(folder: Path) -> Optional[str]:
    """A content hash of a checkpoint folder's tokenizer files (None when it has none): two folders with the same
    tokenizer share one tokenization."""
    files = [p for p in sorted(Path(folder).iterdir()) if p.name in TOKENIZER_FILES]
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class TextTask(Task):
    kind = "text_classification"
    supports_views = True
    max_views = 1  # the text is not augmented per epoch: every view is the same, so a cache needs one view

    def __init__(self, splits: dict[str, TextSplit], num_classes: int, class_names: list[str], device: torch.device,
                 tokenizer_folder: str, max_length: int = 128, info: Optional[dict] = None, bucket_batches: int = 50,
                 word_min_freq: int = 1, word_max_size: Optional[int] = None, regression: bool = False):
        if "train" not in splits:
            raise ValueError("a TextTask needs a 'train' split")
        self.regression = regression  # STS-B style: one float score per text (pair), num_classes == 1
        self.kind = "text_regression" if regression else "text_classification"
        self.splits = splits
        self.num_classes, self.class_names = int(num_classes), list(class_names)
        self.device = torch.device(device)
        self.info = info or {}
        self.notes: list[str] = []
        self.bucket_batches, self.max_length = bucket_batches, max_length
        self.word_min_freq, self.word_max_size = word_min_freq, word_max_size
        self.eval_split = next(s for s in ("test", "val", "train") if s in splits)
        self.encodings: dict[str, dict[str, Encoded]] = {}  # key -> split -> Encoded
        self.folders: dict[str, str] = {}  # key -> tokenizer folder (hf tokenizations)
        self.aliases: dict[str, str] = {}  # a model's tokenizer folder -> the key of an identical tokenization
        self.word_vocab = None
        self.primary = self._add_tokenizer(tokenizer_folder)
        self.transfer_set: Optional[dict] = None  # what augmentation added (a task made by with_transfer_set)

    def split_size(self, split: str) -> int:
        return len(self.splits[split].labels) if split in self.splits else 0

    # tokenizations -------------------------------------------------------------------------------------------
    def _add_tokenizer(self, folder: str) -> str:
        key = tokenizer_key(Path(folder)) or str(folder)
        if key not in self.encodings:
            tokenizer = load_tokenizer(str(folder))
            self.encodings[key] = {s: encode(tokenizer, sp.texts, sp.pairs, self.max_length, self.device)
                                   for s, sp in self.splits.items()}
            self.folders[key] = str(folder)
        self.aliases[str(folder)] = key
        return key

    def vocabulary(self):
        """The word vocabulary of the training texts (built on first use; augmented texts never add words)."""
        if self.word_vocab is None:
            from ..data.words import WordVocab

            train = self.splits["train"]
            texts = train.texts + (train.pairs or [])
            if self.transfer_set is not None:  # the original texts only
                n = self.transfer_set["original"]
                texts = train.texts[:n] + (train.pairs[:n] if train.pairs else [])
            self.word_vocab = WordVocab.build(texts, self.word_min_freq, self.word_max_size)
        return self.word_vocab

    def _add_words(self) -> str:
        if WORDS not in self.encodings:
            vocab = self.vocabulary()
            self.encodings[WORDS] = {}
            for s, sp in self.splits.items():
                ids, lengths = vocab.encode(sp.texts, sp.pairs, self.max_length)
                self.encodings[WORDS][s] = Encoded(ids.to(self.device), lengths.to(self.device))
        return WORDS

    def encoding_key(self, model: nn.Module) -> str:
        """Which tokenization `model` reads: its `input_encoding` (a tokenizer folder or "words"), else the data's."""
        if isinstance(model, nn.parallel.DistributedDataParallel):  # the student while training on several ranks
            model = model.module
        wanted = getattr(model, "input_encoding", None)
        if wanted is None:
            return self.primary
        if wanted == WORDS or wanted in self.encodings:
            return wanted
        return self.aliases.get(str(wanted), str(wanted))

    def prepare_model(self, model: nn.Module) -> None:
        """Tokenize the data the way `model` reads it, if no prepared tokenization fits yet."""
        wanted = getattr(model, "input_encoding", None)
        if wanted is None or self.encoding_key(model) in self.encodings:
            return
        if wanted == WORDS:
            self._add_words()
            return
        if tokenizer_key(Path(wanted)) is None:  # a checkpoint without tokenizer files
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            primary_size = len(load_tokenizer(self.folders[self.primary]))
            if vocab != primary_size:
                raise ModelError(f"{wanted} has no tokenizer files and its vocabulary ({vocab} tokens) differs from "
                                 f"the data tokenizer's ({primary_size}): add its tokenizer to the folder")
            self.aliases[str(wanted)] = self.primary
            self.notes.append(f"{wanted} has no tokenizer files: it reads the data tokenizer's ids (same vocabulary "
                              "size)")
            return
        self._add_tokenizer(str(wanted))

    def same_inputs(self, a: nn.Module, b: nn.Module) -> bool:
        """Whether two models read the same token positions (what layer and attention losses compare)."""
        return self.encoding_key(a) == self.encoding_key(b)

    def model_inputs(self, model: nn.Module, inputs: Any) -> Any:
        """The tensors `model` takes from a batch's inputs (flat dicts pass through unchanged)."""
        if not isinstance(inputs, dict) or not inputs or not isinstance(next(iter(inputs.values())), dict):
            return inputs
        key = self.encoding_key(model)
        if key not in inputs:
            raise ModelError(f"{type(model).__name__} reads the tokenization {key!r}, which this text task has not "
                             "prepared: call task.prepare_model(model) before training or measuring it")
        return inputs[key]

    def tokens_in_use(self, model: nn.Module) -> tuple[Tensor, int]:
        """(ids of every token in the training texts as `model` reads them, plus the special tokens; the [UNK] id):
        what vocabulary trimming keeps."""
        key = self.encoding_key(model)
        if key == WORDS or key not in self.folders:
            raise ModelError("vocab-trim trims a sub-word tokenizer's embedding; a word-level student's vocabulary "
                             "already holds only the training texts' words (see data.text.word_min_freq)")
        enc = self.encodings[key]["train"]
        valid = torch.arange(enc.ids.shape[1], device=enc.ids.device)[None, :] < enc.lengths[:, None]
        tokenizer = load_tokenizer(self.folders[key])
        specials = torch.tensor(tokenizer.all_special_ids, dtype=torch.long)
        return torch.unique(torch.cat([enc.ids[valid].long().cpu(), specials])), int(tokenizer.unk_token_id)

    def deploy_metadata(self, model: nn.Module) -> dict[str, Any]:
        """The classes plus how `model` tokenizes (its own tokenizer folder, or the run's word vocabulary file) and
        the longest text it was trained on (data.text.max_length): what a user must reproduce before the ONNX file."""
        key = self.encoding_key(model)
        folder = self.folders.get(key)
        tokenizer = ("words: the run's word_vocab.txt (lower-cased words, one id per line)" if key == WORDS
                     else f"Hugging Face tokenizer folder {Path(folder).name}" if folder else str(key))
        return {**super().deploy_metadata(model), "tokenizer": tokenizer, "max_length": self.max_length,
                "text_pairs": any(sp.pairs is not None for sp in self.splits.values())}

    def save(self, run_dir: Path) -> None:
        """The word vocabulary, when a model reads words: a deployed word-level student needs it."""
        if WORDS in self.encodings:
            self.vocabulary().save(Path(run_dir) / "word_vocab.txt")

    # batches ---------------------------------------------------------------------------------------------------
    def _inputs(self, key: str, split: str, idx: Tensor) -> dict:
        enc = self.encodings[key][split]
        lengths = enc.lengths[idx]
        width = int(lengths.max())
        if key == WORDS:
            return {"word_ids": enc.ids[idx, :width].long(), "word_lengths": lengths}
        mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        inputs = {"input_ids": enc.ids[idx, :width].long(), "attention_mask": mask}
        if enc.type_ids is not None:
            inputs["token_type_ids"] = enc.type_ids[idx, :width].long()
        return inputs

    def batch(self, split: str, idx: Tensor) -> Batch:
        """Rows `idx` of a split under every prepared tokenization, each padded to its longest row (int64)."""
        return Batch({key: self._inputs(key, split, idx) for key in self.encodings}, self.splits[split].labels[idx],
                     idx)

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Full batches of similar lengths (in the data tokenizer) in random order; `view` changes nothing."""
        lengths_all = self.encodings[self.primary]["train"].lengths.cpu()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n = len(lengths_all)
        order = torch.randperm(n, generator=g)
        steps = self.steps_per_epoch(batch_size)
        size = min(batch_size, n)
        order = order[:steps * size]
        lengths = lengths_all[order]
        window = size * self.bucket_batches
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            chunk = chunk[torch.sort(lengths[start:start + window], stable=True).indices]
            batches += list(chunk.split(size))
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield self.batch("train", batches[b].to(self.device))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        order = torch.sort(self.encodings[self.primary][split].lengths.cpu(), stable=True).indices
        for chunk in order.split(batch_size):
            yield self.batch(split, chunk.to(self.device))

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """What the teacher cache labels: the training split in length order (the same for every view)."""
        return self.eval_batches("train", batch_size)

    def example_inputs(self, batch_size: int) -> Any:
        """`batch_size` rows of typical length (nearest the median of the evaluation split), for FLOPs and latency:
        a latency figure should describe a typical sentence, not whichever came first."""
        lengths = self.encodings[self.primary][self.eval_split].lengths.float()
        order = torch.argsort((lengths - lengths.median()).abs(), stable=True)
        idx = order[:batch_size]
        if len(idx) < batch_size:
            idx = idx.repeat(-(-batch_size // len(idx)))[:batch_size]
        return self.batch(self.eval_split, idx).inputs

    def with_train_subset(self, n: int, seed: int) -> "TextTask":
        """A copy training on a stratified subset of `n` texts (teacher.limit_train); no re-tokenization."""
        from .splits import stratified_subset

        train = self.splits["train"]
        keep = stratified_subset(_strata(train.labels.cpu()) if self.regression else train.labels, n, seed)
        rows = keep.tolist()
        self.vocabulary()  # built from the full training texts, shared with the students
        task = TextTask.__new__(TextTask)
        task.__dict__.update(self.__dict__)
        task.splits = {**self.splits, "train": TextSplit([train.texts[i] for i in rows],
                                                         [train.pairs[i] for i in rows] if train.pairs else None,
                                                         train.labels[keep.to(self.device)])}
        task.encodings = {}
        for key, encs in self.encodings.items():
            enc, idx = encs["train"], keep.to(self.device)
            task.encodings[key] = {**encs, "train": Encoded(enc.ids[idx], enc.lengths[idx],
                                                            None if enc.type_ids is None else enc.type_ids[idx])}
        return task

    # augmentation ----------------------------------------------------------------------------------------------
    def with_transfer_set(self, settings, seed: int) -> "TextTask":
        """A copy of this task whose training split also holds augmented, unlabeled texts (Tang et al.): what a
        student distils from (the teacher labels them; cross-entropy skips them). Evaluation splits are shared."""
        from ..data.text_augment import augment_texts

        train = self.splits["train"]
        texts, pairs, sources = augment_texts(train.texts, train.pairs, settings, seed)
        unlabeled = (torch.full((len(texts),), float("nan"), device=self.device) if self.regression
                     else torch.full((len(texts),), UNLABELED, dtype=torch.long, device=self.device))
        labels = torch.cat([train.labels, unlabeled])
        big = TextSplit(train.texts + texts, (train.pairs + pairs) if train.pairs is not None else None, labels)
        task = TextTask.__new__(TextTask)
        task.__dict__.update(self.__dict__)
        task.splits = {**self.splits, "train": big}
        task.notes = list(self.notes)
        task.transfer_set = {"original": len(train.texts), "augmented": len(texts), "copies_tried": settings.copies,
                             "settings": dict(settings.__dict__)}
        task.vocabulary()  # the vocabulary of the original texts, before the encodings below read it
        task.encodings = {key: dict(encs) for key, encs in self.encodings.items()}
        for key in task.encodings:
            if key == WORDS:
                ids, lengths = task.word_vocab.encode(big.texts, big.pairs, self.max_length)
                task.encodings[key]["train"] = Encoded(ids.to(self.device), lengths.to(self.device))
            else:
                tokenizer = load_tokenizer(self.folders[key])
                task.encodings[key]["train"] = encode(tokenizer, big.texts, big.pairs, self.max_length, self.device)
        return task

    # model -----------------------------------------------------------------------------------------------------
    def model_defaults(self) -> dict:
        """The word vocabulary's size, for word-level students (`text_bilstm`, `text_cnn`)."""
        return {"vocab_size": len(self.vocabulary())}

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        out = model(**self.model_inputs(model, inputs))
        return out.logits if hasattr(out, "logits") else out

    def dynamic_dims(self) -> dict[int, str]:
        return {0: "batch", 1: "sequence"}  # dynamic padding: every batch has its own length

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        from ..measure.quality import regression_metrics, text_metrics

        if self.regression:
            return regression_metrics(logits, targets)
        return text_metrics(logits, targets, self.class_names)

    def score_batch(self, logits: Tensor, targets: Tensor):
        """A regression has no per-batch accuracy (its figure, Pearson r, needs the whole split)."""
        return None if self.regression else super().score_batch(logits, targets)

    def history_metrics(self) -> tuple[str, ...]:
        return ("pearson", "spearman") if self.regression else ()


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


def _scores(table) -> torch.Tensor:
    """Regression labels as floats; a row that is not a number is named."""
    values = []
    for i, label in enumerate(table.labels):
        try:
            values.append(float(label))
        except ValueError:
            raise DataError(f"{table.path}, row {i + 2}: label {label!r} is not a number, but data.task is "
                            "text_regression (use text_classification for class labels)") from None
    return torch.tensor(values, dtype=torch.float32)


def _strata(scores: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Quantile bins of regression scores: what the stratified splits and limits balance on."""
    edges = torch.quantile(scores, torch.linspace(0, 1, bins + 1)[1:-1])
    return torch.bucketize(scores, edges)


def build_text_task(cfg, device: torch.device, seed: int, channels_last: bool = False,
                    regression: bool = False) -> TextTask:
    """`data.source` is a folder with train (and dev/validation, test) files, or one train file. The dev file, when
    there is one, is the validation split (GLUE: train on train, report dev with `data.eval_split: val`); else
    `val_fraction` of train is held out, stratified (regression: by score quintile)."""
    from ..data.text import class_names_of, encode_labels, find_split_files, read_table
    from ..models.hf import resolve_checkpoint
    from .splits import choose_eval_split, example_split_statement, limit_test, split_train

    text = cfg.text
    files = find_split_files(Path(cfg.source))
    tables = {split: read_table(path, text.format, text.text_column, text.pair_column, text.label_column,
                                encoding=text.encoding) for split, path in files.items()}
    if regression:
        classes = ["score"]
        labels = {split: _scores(t) for split, t in tables.items()}
        strata = {split: _strata(v) for split, v in labels.items()}
    else:
        classes = class_names_of(tables["train"].labels)
        if len(classes) < 2:
            raise DataError(f"{files['train']}: the label column holds one class ({classes}); classification needs "
                            "two (for scores, use data.task: text_regression)")
        labels = {split: torch.tensor(encode_labels(t, classes), dtype=torch.long) for split, t in tables.items()}
        strata = labels
    notes: list[str] = []
    rows: dict[str, torch.Tensor] = {}
    has_dev = "val" in tables
    if has_dev:  # a dev file: the whole train file trains (limit_train still applies)
        held = cfg.model_copy(update={"val_fraction": 0.0})
        rows["train"], _ = split_train(strata["train"], held, seed, notes, unit="sentences")
        rows["val"] = torch.arange(len(labels["val"]))
    else:
        rows["train"], rows["val"] = split_train(strata["train"], cfg, seed, notes, unit="sentences")
        tables["val"], labels["val"] = tables["train"], labels["train"]
    if "test" in tables:
        rows["test"] = limit_test(strata["test"], cfg, seed, notes, unit="sentences")
    splits = {}
    for split, idx in rows.items():
        if len(idx) == 0:
            continue
        table, keep = tables[split], idx.tolist()
        pairs = [table.pairs[i] for i in keep] if table.pairs is not None else None
        splits[split] = TextSplit([table.texts[i] for i in keep], pairs, labels[split][idx].to(device))
    eval_split = choose_eval_split(cfg, "val" in splits, "test" in splits, notes)
    tokenizer_path = str(resolve_checkpoint(text.tokenizer))
    task = TextTask(splits, len(classes), classes, device, tokenizer_path, max_length=text.max_length,
                    bucket_batches=text.bucket_batches, word_min_freq=text.word_min_freq,
                    word_max_size=text.word_max_size, regression=regression)
    train_enc = task.encodings[task.primary]["train"]
    task.info = {"source": cfg.source, "fingerprint": _files_fingerprint(list(files.values()), Path(tokenizer_path)),
                 "files": {s: str(p) for s, p in files.items()}, "tokenizer": tokenizer_path,
                 "max_length": text.max_length, **{f"train_{k}": v for k, v in token_stats(train_enc).items()}}
    task.eval_split = eval_split
    task.notes += notes
    truncated = int((train_enc.lengths >= text.max_length).sum())
    split = example_split_statement({k: len(v.texts) for k, v in splits.items()}, "test" in tables, "sentences")
    if has_dev:
        split["detail"] = "validation is the source's dev file; " + split["detail"].split("; ", 1)[1]
    task.info["split_method"] = split
    task.info["preprocessing"] = ([{"what": f"{truncated} of {len(train_enc)} training texts truncated to "
                                            f"{text.max_length} tokens (data.text.max_length)"}] if truncated else [])
    if truncated:
        task.notes.append(f"{truncated} training texts were truncated to data.text.max_length = {text.max_length} "
                          "tokens")
    return task


def _files_fingerprint(files: list[Path], tokenizer_dir: Path) -> str:
    """Content hash of the data files and the tokenizer's files: an edited file retrains, a moved one does not."""
    h = hashlib.sha256()
    for path in list(files) + [p for p in sorted(tokenizer_dir.iterdir()) if p.name in TOKENIZER_FILES]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
