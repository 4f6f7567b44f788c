"""Recurrent encoder-decoder with attention (Luong et al. 2015), for sequence-to-sequence tasks such as G2P.

One model class serves teacher and student (sizes differ), and exposes the two halves decoding needs:

- `encode(src, src_len) -> (memory, keys, mask, h, c)`: the encoder states, the attention keys precomputed once,
  the source mask and the decoder's initial state (`c` is a zero placeholder for GRU, so every cell has the same
  five tensors — what the ONNX export of encoder and decoder step relies on);
- `step(token, memory, keys, mask, h, c) -> (logits, h, c)`: one decoder step.

`forward(src, src_len, tgt_in)` is teacher forcing: the decoder RNN runs over the whole target in one call (no
input feeding), then attention for every step at once — the same `_readout` as `step`, so training and decoding
compute the same function (tested). Padding is exact: a bidirectional encoder's backward direction reads each row
reversed within its own length, so a sequence gives the same outputs alone and in a padded batch.

All weights live in nn.Linear / nn.LSTM / nn.GRU / nn.Embedding modules that are *called*, never read by
attribute, so dynamic int8 quantization swaps every Linear and RNN.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from leankd.errors import ModelError
from leankd.models.registry import register_model
from leankd.models.text_rnn import reverse_padded

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
ATTENTIONS = ("dot", "general", "additive")
PAD, BOS, EOS = 0, 1, 2  # leankd.data.seq2seq.SymbolVocab's fixed ids


def _last_valid(x: Tensor, lengths: Tensor) -> Tensor:
    return x.gather(1, (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.shape[2])).squeeze(1)


class Attention(nn.Module):
    """Scores between decoder states [B, T, H] and encoder states [B, S, H]: dot, general (bilinear) or additive
    (Bahdanau). `keys(memory)` is the part that depends on the encoder only, computed once per source."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ModelError(f"seq2seq: attention {kind!r} is not one of {ATTENTIONS}")
        self.kind = kind
        if kind == "general":
            self.key = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.key = nn.Linear(hidden, hidden, bias=False)
            self.query = nn.Linear(hidden, hidden)
            self.energy = nn.Linear(hidden, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        return memory if self.kind == "dot" else self.key(memory)

    def scores(self, queries: Tensor, keys: Tensor) -> Tensor:
        if self.kind == "additive":  # [B, T, 1, H] + [B, 1, S, H] -> [B, T, S]
            return self.energy(torch.tanh(self.query(queries).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        return queries @ keys.transpose(1, 2)


class Seq2SeqRNN(nn.Module):
    input_encoding = "seq2seq"

    def __init__(self, num_classes: int, src_vocab: int, cell: str = "lstm", embed_dim: int = 64, hidden: int = 128,
                 enc_layers: int = 1, dec_layers: int = 1, bidirectional: bool = True, dropout: float = 0.0,
                 attention: str = "general"):
        super().__init__()
        if cell not in CELLS:
            raise ModelError(f"seq2seq: cell {cell!r} is not one of {tuple(CELLS)}")
        if bidirectional and hidden % 2:
            raise ModelError(f"seq2seq: a bidirectional encoder splits hidden={hidden} between two directions: use "
                             "an even hidden size")
        if min(enc_layers, dec_layers) < 1:
            raise ModelError("seq2seq: enc_layers and dec_layers must be >= 1")
        rnn = CELLS[cell]
        self.cell, self.hidden, self.dec_layers, self.bidirectional = cell, hidden, dec_layers, bidirectional
        self.num_classes = num_classes  # the target vocabulary
        self.src_embed = nn.Embedding(src_vocab, embed_dim, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(num_classes, embed_dim, padding_idx=PAD)
        self.drop = nn.Dropout(dropout)
        per_dir = hidden // 2 if bidirectional else hidden
        # one module per layer and direction: the backward direction reads rows reversed within their lengths
        self.enc_fwd = nn.ModuleList(rnn(embed_dim if i == 0 else hidden, per_dir, batch_first=True)
                                     for i in range(enc_layers))
        self.enc_bwd = nn.ModuleList(rnn(embed_dim if i == 0 else hidden, per_dir, batch_first=True)
                                     for i in range(enc_layers)) if bidirectional else nn.ModuleList()
        self.bridge = nn.Linear(hidden, dec_layers * hidden)  # encoder summary -> decoder initial state
        self.decoder = rnn(embed_dim, hidden, num_layers=dec_layers, batch_first=True,
                           dropout=dropout if dec_layers > 1 else 0.0)
        self.attention = Attention(attention, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)  # Luong's attentional state tanh(W [context; h])
        self.out = nn.Linear(hidden, num_classes)

    # ----------------------------------------------------------------------------------------------- encoder
    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        src_len = src_len.clamp(min=1)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_len[:, None]
        x = self.drop(self.src_embed(src))
        for i, fwd in enumerate(self.enc_fwd):
            out, _ = fwd(x)
            if self.bidirectional:
                back, _ = self.enc_bwd[i](reverse_padded(x, src_len))
                out = torch.cat([out, reverse_padded(back, src_len)], dim=-1)
            x = self.drop(out) if i < len(self.enc_fwd) - 1 else out
        memory = x * mask.unsqueeze(-1)
        if self.bidirectional:  # forward direction's last step, backward direction's last step (= position 0)
            half = self.hidden // 2
            summary = torch.cat([_last_valid(memory[..., :half], src_len), memory[:, 0, half:]], dim=-1)
        else:
            summary = _last_valid(memory, src_len)
        h = torch.tanh(self.bridge(summary)).view(-1, self.dec_layers, self.hidden).transpose(0, 1).contiguous()
        c = torch.zeros_like(h)
        return memory, self.attention.keys(memory), mask, h, c

    # ----------------------------------------------------------------------------------------------- decoder
    def _readout(self, states: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        scores = self.attention.scores(states, keys)
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        context = torch.softmax(scores, dim=-1) @ memory
        attentional = torch.tanh(self.combine(torch.cat([context, states], dim=-1)))
        return self.out(self.drop(attentional))

    def _run_decoder(self, tokens: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.drop(self.tgt_embed(tokens))
        if self.cell == "lstm":
            out, (h, c) = self.decoder(x, (h, c))
        else:
            out, h = self.decoder(x, h)
        return out, h, c

    def step(self, token: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, h: Tensor, c: Tensor
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits [B, V] of the next token after `token` [B], and the new decoder state."""
        out, h, c = self._run_decoder(token.unsqueeze(1), h, c)
        return self._readout(out, memory, keys, mask).squeeze(1), h, c

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: logits [B, T, V] for every position of `tgt_in` ([BOS, y1, ..., yn, PAD...])."""
        memory, keys, mask, h, c = self.encode(src, src_len)
        out, _, _ = self._run_decoder(tgt_in, h, c)
        return self._readout(out, memory, keys, mask)


@register_model
def seq2seq_rnn(num_classes: int, src_vocab: int = 64, cell: str = "lstm", embed_dim: int = 64, hidden: int = 128,
                enc_layers: int = 1, dec_layers: int = 1, bidirectional: bool = True, dropout: float = 0.0,
                attention: str = "general") -> Seq2SeqRNN:
    """Recurrent encoder-decoder with attention; `num_classes` is the target vocabulary, `src_vocab` the source's
    (a seq2seq task passes both)."""
    return Seq2SeqRNN(num_classes, src_vocab, cell, embed_dim, hidden, enc_layers, dec_layers, bidirectional,
                      dropout, attention)
