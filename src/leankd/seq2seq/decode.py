"""Greedy and batched beam-search decoding — the same code for teacher, students and their deployed artifacts.

A decodable model has `encode(src, src_len) -> (memory, keys, mask, h, c)` and
`step(token, memory, keys, mask, h, c) -> (logits, h, c)` (`leankd.models.seq2seq.Seq2SeqRNN`; the ONNX Runtime
artifact implements the same two calls). Nothing here knows how the model computes them.

Beam search keeps finished hypotheses in the beam with their score frozen (they can only be followed by padding
at no cost) and ranks the final beams by length-normalized log-probability, score / length ** `length_penalty`
(1.0: mean log-probability per token, 0: raw sum). With beam 1 it makes exactly greedy's choices (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from leankd.models.seq2seq import BOS, EOS, PAD


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS / EOS
    score: float  # length-normalized log-probability (beam search); 0.0 for greedy


def _strip(row: list[int]) -> list[int]:
    out = []
    for t in row:
        if t == EOS:
            break
        if t != PAD:
            out.append(t)
    return out


def _never_pad_or_bos(logits: Tensor) -> Tensor:
    """A live hypothesis may not emit padding or a second begin symbol (the models never learn to, but an untrained
    or small one could, and n-best lists would hold silently shortened duplicates)."""
    blocked = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    blocked[[PAD, BOS]] = True
    return logits.masked_fill(blocked, torch.finfo(logits.dtype).min)


@torch.no_grad()
def greedy(model, src: Tensor, src_len: Tensor, max_len: int) -> list[list[int]]:
    """The most likely token at every step, for a batch at once; stops when every row has produced EOS."""
    memory, keys, mask, h, c = model.encode(src, src_len)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    token = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
    steps = []
    for _ in range(max_len):
        logits, h, c = model.step(token, memory, keys, mask, h, c)
        token = _never_pad_or_bos(logits).argmax(-1).masked_fill(done, PAD)
        steps.append(token)
        done = done | (token == EOS)
        if bool(done.all()):
            break
    return [_strip(row) for row in torch.stack(steps, 1).tolist()]


@torch.no_grad()
def beam_search(model, src: Tensor, src_len: Tensor, beam: int, max_len: int, length_penalty: float = 1.0,
                n_best: int = 1) -> list[list[Hypothesis]]:
    """The `n_best` (<= beam) best hypotheses of every source, best first, by length-normalized log-probability."""
    if beam < 1 or not 1 <= n_best <= beam:
        raise ValueError(f"beam search needs beam >= 1 and 1 <= n_best <= beam, got beam={beam}, n_best={n_best}")
    b, k, device = src.shape[0], beam, src.device
    memory, keys, mask, h, c = model.encode(src, src_len)
    memory, keys, mask = (t.repeat_interleave(k, dim=0) for t in (memory, keys, mask))
    h, c = h.repeat_interleave(k, dim=1), c.repeat_interleave(k, dim=1)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per source at the start: the K first picks are K different tokens
    token = torch.full((b * k,), BOS, dtype=torch.long, device=device)
    history = torch.zeros((b * k, 0), dtype=torch.long, device=device)
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    base = (torch.arange(b, device=device) * k).unsqueeze(1)
    for _ in range(max_len):
        logits, h, c = model.step(token, memory, keys, mask, h, c)
        logp = torch.log_softmax(_never_pad_or_bos(logits.float()), dim=-1)
        vocab = logp.shape[-1]
        # a finished hypothesis continues only with padding, at no cost: its score is frozen
        frozen = torch.full_like(logp[:1], float("-inf"))
        frozen[0, PAD] = 0.0
        logp = torch.where(finished.unsqueeze(1), frozen, logp)
        top, idx = (scores.reshape(-1, 1) + logp).view(b, k * vocab).topk(k, dim=1)
        origin = (base + idx // vocab).view(-1)
        token = (idx % vocab).view(-1)
        h, c = h[:, origin], c[:, origin]
        history = torch.cat([history[origin], token.unsqueeze(1)], dim=1)
        was_finished = finished[origin]
        lengths = lengths[origin] + (~was_finished).float()
        finished = was_finished | (token == EOS)
        scores = top
        if bool(finished.all()):
            break
    normalized = scores / lengths.clamp(min=1).view(b, k) ** length_penalty
    order = normalized.argsort(dim=1, descending=True)[:, :n_best]
    rows, norm = history.view(b, k, -1).tolist(), normalized.tolist()
    return [[Hypothesis(_strip(rows[i][j]), norm[i][j]) for j in order[i].tolist()] for i in range(b)]


def decode(model, src: Tensor, src_len: Tensor, beam: int, max_len: int, length_penalty: float = 1.0
           ) -> list[list[int]]:
    """The best hypothesis of every source: greedy for beam 1, else beam search."""
    if beam == 1:
        return greedy(model, src, src_len, max_len)
    return [hyps[0].tokens for hyps in beam_search(model, src, src_len, beam, max_len, length_penalty)]
