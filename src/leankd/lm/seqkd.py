"""Sequence-level KD for causal LMs (Kim & Rush 2016's idea on running text): the teacher continues the first
`prompt_tokens` tokens of training blocks once; the continuations are stored (a run's teacher_cache/, fingerprinted
by the data, the teacher's weights, the settings and the seed, written atomically) and reused by every rerun. The student then learns by cross-entropy on those blocks mixed with the real text."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core import dist
from ..io import atomic_path, write_json_atomic
from .generate import generate

CHUNK = 64  # prompts continued per generate() call


def prompt_blocks(train_blocks: int, prompts: int | None) -> Tensor:
    """Which training blocks give prompts: all, or `prompts` of them spread evenly over the text."""
    if prompts is None or prompts >= train_blocks:
        return torch.arange(train_blocks)
    return torch.linspace(0, train_blocks - 1, prompts).round().long().unique()


def build_continuations(task, teacher: nn.Module, prompt_tokens: int, prompts: int | None, temperature: float,
                        seed: int) -> Tensor:
    """[N, context + 1] windows: a training block's first `prompt_tokens` tokens and the teacher's continuation
    (sampled at `temperature`, greedy at 0), in chunks, each with its own seed."""
    train = task.splits["train"]
    idx = prompt_blocks(len(train), prompts).to(train.ids.device)
    context = task.context
    out = []
    for i, chunk in enumerate(idx.split(CHUNK)):
        prompt = train.batch(chunk).inputs[:, :prompt_tokens]
        out.append(generate(teacher, prompt, context + 1 - prompt_tokens, temperature=max(temperature, 1e-6),
                            greedy=temperature == 0, seed=seed * 1_000_003 + i).cpu().to(torch.int32))
    return torch.cat(out)


def continuations(directory: Path, fp: str, build: Callable[[], Tensor], log: Callable[[str], None] = print,
                  prune: bool = True) -> tuple[Tensor, dict]:
    """The windows of fingerprint `fp` from `directory` (built by `build` and saved when missing; under torchrun
    rank 0 builds and the others read its file). Returns (windows, info for the report). With `prune` (the run
    directory's own cache, as for the teacher's logits) continuations of other fingerprints — another teacher, other
    prompts — are stale: removed once this fingerprint's files are complete, never before."""
    path, meta = directory / f"lm-seq-{fp}.safetensors", directory / f"lm-seq-{fp}.json"

    def make() -> None:
        if not (meta.is_file() and path.is_file()):
            _build(path, meta, fp, build, log)
        for old in sorted(directory.glob("lm-seq-*")) if prune else []:
            if old.name not in (path.name, meta.name):
                old.unlink(missing_ok=True)
                log(f"removed stale sequence-level KD continuations {old.name}")

    reused = meta.is_file() and path.is_file()
    dist.main_first(make)
    info = json.loads(meta.read_text())
    return load_file(str(path))["windows"].long(), {**info, "reused": reused}


def _build(path: Path, meta: Path, fp: str, build: Callable[[], Tensor], log: Callable[[str], None]) -> None:
    """Generate the windows and write them, then their JSON record: the record is the mark of a complete set."""
    log("sequence-level KD: the teacher continues the training prompts (once; cached) ...")
    start = time.perf_counter()
    windows = build()
    seconds = time.perf_counter() - start
    with atomic_path(path) as tmp:
        save_file({"windows": windows.contiguous()}, str(tmp))
    write_json_atomic(meta, {"fingerprint": fp, "sequences": int(windows.shape[0]),
                             "tokens_per_sequence": int(windows.shape[1]), "build_s": round(seconds, 3)})
