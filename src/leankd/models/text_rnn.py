"""Small word-level text students: a BiLSTM (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks") and a CNN (Kim 2014). Both read `word_ids` [B, T] and `word_lengths` [B] from the word
vocabulary the text task builds from the training data (`input_encoding = "words"` tells the task which of its
tokenizations a model reads), so they learn from a BERT teacher whose sub-word tokens they never see.

Padding is handled exactly, without packed sequences (which neither ONNX export nor int8 quantization handle
well): the backward direction is a second LSTM run over each row reversed within its own length, so trailing
padding only ever follows the real words in both directions, and pooling ignores padded positions. A sentence
gives the same logits alone and in a padded batch.

Sizes at the paper's settings (embedding 300, hidden 150, MLP 200) with a 15k-word SST-2 vocabulary: ~5.1M
parameters, 4.5M of them the embedding; the compute is ~0.5M MACs per word.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from leankd.errors import ModelError
from leankd.models.registry import register_model

POOLINGS = ("max", "last")


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row of [B, T, D] reversed within its first `lengths[b]` positions; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = lengths[:, None] - 1 - t
    idx = torch.where(idx >= 0, idx, t)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def masked_max(x: Tensor, valid: Tensor) -> Tensor:
    """Max over time of [B, T, D] at the positions where `valid` [B, T] is true."""
    return x.masked_fill(~valid.unsqueeze(-1), torch.finfo(x.dtype).min).amax(dim=1)


def _last(x: Tensor, lengths: Tensor) -> Tensor:
    return x.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2])).squeeze(1)


class TextBiLSTM(nn.Module):
    input_encoding = "words"

    def __init__(self, num_classes: int, vocab_size: int, embed_dim: int, hidden: int, layers: int, mlp: int,
                 dropout: float, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"text_bilstm: pooling {pooling!r} is not one of {POOLINGS}")
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.forward_lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.backward_lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, mlp), nn.ReLU()) if mlp else nn.Identity()
        self.classifier = nn.Linear(mlp or 2 * hidden, num_classes)

    def forward(self, word_ids: Tensor, word_lengths: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(word_ids, word_lengths))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.drop(self.mlp(self.drop(features))))

    def forward_features(self, word_ids: Tensor, word_lengths: Tensor) -> Tensor:
        """The pooled BiLSTM state [B, 2 * hidden]."""
        lengths = word_lengths.long().clamp(min=1, max=word_ids.shape[1])
        x = self.drop(self.embed(word_ids.long()))
        out_f, _ = self.forward_lstm(x)
        out_b, _ = self.backward_lstm(reverse_padded(x, lengths))  # position i: words L-1 .. L-1-i, read backwards
        if self.pooling == "last":
            h = torch.cat([_last(out_f, lengths), _last(out_b, lengths)], dim=-1)
        else:  # both directions' outputs sit at positions 0..L-1 (reversed order does not matter to a max)
            valid = torch.arange(word_ids.shape[1], device=word_ids.device)[None, :] < lengths[:, None]
            h = masked_max(torch.cat([out_f, out_b], dim=-1), valid)
        return h


class TextCNN(nn.Module):
    input_encoding = "words"

    def __init__(self, num_classes: int, vocab_size: int, embed_dim: int, filters: int, kernels: tuple[int, ...],
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        # padding k-1: a text shorter than a kernel still has windows (all partly padding)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, k, padding=k - 1) for k in kernels)
        self.kernels = tuple(kernels)
        self.drop = nn.Dropout(dropout)
        self.num_classes = num_classes
        self.classifier = nn.Linear(filters * len(kernels), num_classes)

    def forward(self, word_ids: Tensor, word_lengths: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(word_ids, word_lengths))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.drop(features))

    def forward_features(self, word_ids: Tensor, word_lengths: Tensor) -> Tensor:
        """Max-over-time convolution features [B, filters * len(kernels)]."""
        lengths = word_lengths.long().clamp(min=1, max=word_ids.shape[1])
        valid_words = torch.arange(word_ids.shape[1], device=word_ids.device)[None, :] < lengths[:, None]
        x = self.embed(word_ids.long()) * valid_words.unsqueeze(-1)  # padding reads as zeros, as at batch 1
        x = self.drop(x).transpose(1, 2)
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            h = torch.relu(conv(x)).transpose(1, 2)  # [B, T + k - 1, F]; window p covers words p-k+1 .. p
            valid = torch.arange(h.shape[1], device=h.device)[None, :] < (lengths + k - 1)[:, None]
            pooled.append(masked_max(h, valid))
        return torch.cat(pooled, dim=-1)


@register_model
def text_bilstm(num_classes: int, vocab_size: int, embed_dim: int = 300, hidden: int = 150, layers: int = 1,
                mlp: int = 200, dropout: float = 0.1, pooling: str = "max") -> nn.Module:
    """Word-level BiLSTM (Tang et al. 2019: embedding 300, hidden 150, ReLU MLP 200). `pooling`: max over time of
    both directions (default) or their last states (the paper). `vocab_size` comes from the text task. `layers` > 1
    stacks each direction on its own (layer 2 does not see the other direction, unlike nn.LSTM(bidirectional))."""
    return TextBiLSTM(num_classes, vocab_size, embed_dim, hidden, layers, mlp, dropout, pooling)


@register_model
def text_cnn(num_classes: int, vocab_size: int, embed_dim: int = 300, filters: int = 100,
             kernels: tuple[int, ...] = (3, 4, 5), dropout: float = 0.5) -> nn.Module:
    """Kim (2014) CNN: convolutions of widths 3/4/5 over word embeddings, max over time, dropout, linear."""
    if not kernels or any(int(k) < 1 for k in kernels):
        raise ModelError(f"text_cnn: kernels {kernels} must be positive widths")
    return TextCNN(num_classes, vocab_size, embed_dim, filters, tuple(int(k) for k in kernels), dropout)
