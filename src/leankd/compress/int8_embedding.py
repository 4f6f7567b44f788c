"""Int8 embeddings that accept any index tensor the float ones accept.

PyTorch's weight-only int8 `Embedding` / `EmbeddingBag` run `quantized::embedding_byte` / `embedding_bag_byte`,
which refuse non-contiguous indices ("Expect weight, indices, and offsets to be contiguous") where `nn.Embedding`
takes them. Hugging Face BERT-style models build `token_type_ids` with `expand()` (stride 0 over the batch) when none
are passed, so MiniLM's `token_type_embeddings` failed its forward check and stayed in float. These subclasses make
the index tensors contiguous first (a no-op for contiguous ones) and are otherwise PyTorch's modules: the same packed
weights, state dict keys and kernels, so artifacts saved before load unchanged.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.ao.nn import quantized as nnq

__all__ = ["Int8Embedding", "Int8EmbeddingBag", "accept_any_indices"]


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


class Int8Embedding(nnq.Embedding):
    """`torch.ao.nn.quantized.Embedding` whose indices may be non-contiguous (e.g. made by `expand()`)."""

    def forward(self, indices: Tensor) -> Tensor:
        return super().forward(indices.contiguous())


class Int8EmbeddingBag(nnq.EmbeddingBag):
    """`torch.ao.nn.quantized.EmbeddingBag` whose indices, offsets and per-sample weights may be non-contiguous."""

    def forward(self, indices: Tensor, offsets: Optional[Tensor] = None, per_sample_weights: Optional[Tensor] = None,
                compressed_indices_mapping: Optional[Tensor] = None) -> Tensor:
        return super().forward(indices.contiguous(), _contiguous(offsets), _contiguous(per_sample_weights),
                               _contiguous(compressed_indices_mapping))


_SUBCLASS = {nnq.Embedding: Int8Embedding, nnq.EmbeddingBag: Int8EmbeddingBag}


def accept_any_indices(qmod: nn.Module) -> nn.Module:
    """`qmod`, an int8 embedding made by `quantize_dynamic`, turned in place into the subclass above (any other
    module is returned as is)."""
    cls = _SUBCLASS.get(type(qmod))
    if cls is not None:
        qmod.__class__ = cls
    return qmod
