"""Vocabulary trimming for transformer text students (what TextPruner calls vocabulary pruning): keep only the rows
of the word-embedding matrix for tokens the task's training texts use, plus the special tokens; every other token
reads as [UNK].

Why: in small BERT-family students most parameters are the embedding (MiniLM-L6-H384: 11.7M of 22.7M; a 3-layer
copy: 11.7M of 17.4M), while a task's training texts use a few thousand of the 30k WordPiece tokens. The tokenizer is
left alone: an id map inside the model (one int64 lookup per token) turns the tokenizer's ids into rows of the
smaller matrix, so the trimmed model takes the same inputs as the original and exports to ONNX unchanged. What it
costs in accuracy is what dev/test tokens unseen in training lose by becoming [UNK]: the report measures it as
the artifact's accuracy drop.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import LeanKDError


class TrimmedVocabulary(nn.Module):
    """`inner` with a smaller embedding; `id_map[old id] -> new row` ([UNK]'s row for tokens that were dropped)."""

    def __init__(self, inner: nn.Module, id_map: Tensor, kept: int, original: int):
        super().__init__()
        self.inner = inner
        self.register_buffer("id_map", id_map)
        self.kept_tokens, self.original_tokens = kept, original

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        return self.inner(self.id_map[input_ids], attention_mask, token_type_ids)


def trim_vocabulary(model: nn.Module, keep_ids: Tensor, unk_id: int) -> TrimmedVocabulary:
    """A copy of a Hugging Face text classifier (leankd's `TextClassifier`) whose input embedding keeps the rows
    `keep_ids` (sorted, unique; [UNK] is added)."""
    hf = getattr(model, "hf", None)
    if hf is None or not hasattr(hf, "get_input_embeddings"):
        raise LeanKDError(f"vocab-trim trims the word embedding of a Hugging Face text student (hf:...); "
                          f"{type(model).__name__} has none")
    import copy

    hf = copy.deepcopy(hf)
    old = hf.get_input_embeddings()
    vocab = old.num_embeddings
    keep = torch.unique(torch.cat([keep_ids.long().cpu(), torch.tensor([unk_id])]))
    if int(keep.min()) < 0 or int(keep.max()) >= vocab:
        raise LeanKDError(f"vocab-trim: token ids {int(keep.min())}..{int(keep.max())} outside the embedding's "
                          f"{vocab} rows: the student does not read the data tokenizer's ids")
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=None)
    with torch.no_grad():
        new.weight.copy_(old.weight[keep])
    hf.set_input_embeddings(new)
    hf.config.vocab_size = len(keep)
    id_map = torch.full((vocab,), int((keep == unk_id).nonzero()[0, 0]), dtype=torch.long)
    id_map[keep] = torch.arange(len(keep))
    from ..models.hf import TextClassifier

    return TrimmedVocabulary(TextClassifier(hf, source=getattr(model, "source", "")), id_map, len(keep), vocab)
