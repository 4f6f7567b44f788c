"""Decoder-only transformers (causal language models) built from a Hugging Face config with random init (nothing is
ever downloaded): `gpt` with size keywords and presets `lm_small` and `lm_tiny`. The wrapper `CausalLM` and
`copy_layers` (the DistilBERT/DistilGPT-2 student initialization) live in `causal.py` and are re-exported here.

The contract the `causal_lm` task relies on: `CausalLM.forward(input_ids [B, T]) -> logits [B, T, V]` (a plain
tensor, not a ModelOutput); `num_classes` = the vocabulary size V; `context` = the most positions it reads.

Which Hugging Face architectures, and why: leankd's dynamic int8 (`compress.quantize.quantize_dynamic_int8`) swaps
`nn.Linear` layers, and HF GPT-2 keeps its projections in its own `Conv1D` (transposed weights), which it would
leave in float. So:
- `positions="learned"` is **GPTBigCode** with `multi_query=False`: GPT-2's block exactly (pre-LayerNorm, learned
  absolute positions, fused qkv, GELU MLP of `intermediate`, biases, tied head), but every projection an
  `nn.Linear`. At nanoGPT's CPU Shakespeare-char size (4 layers, 128 hidden, context 64, V=65) it has 0.81M
  parameters, nanoGPT's 0.80M plus the position table. (OPT would do too, but offsets its positions by 2 and
  computes them from the attention mask; GPT-Neo does not scale attention scores.)
- `positions="rotary"` is **Llama**: RMSNorm, rotary positions (no position table), SwiGLU MLP (three Linears of
  `intermediate`, so at the same `intermediate` it has 1.5x GPT's MLP parameters), no biases.
Both run with `sdpa` attention on CPU and keep a KV cache for generation (`leankd.lm.generate`); dynamic int8
swaps all their Linears (the lm_head too: 4 per GPTBigCode block, 7 per Llama block; tested). Largest logit change
from int8 at random init (V=65, 2 x 20 tokens): lm_tiny 0.011 (rotary 0.013), lm_small 0.031 (rotary 0.041).

`dropout` is GPTBigCode's embedding, attention and residual dropout; Llama has attention dropout only.
"""
from __future__ import annotations

import importlib.util

from leankd.errors import MissingPackageError, ModelError
from leankd.models.causal import CausalLM, copy_layers, every_other, from_config
from leankd.models.registry import register_model

__all__ = ["CausalLM", "copy_layers", "every_other", "from_config", "build_config", "gpt", "lm_small", "lm_tiny"]

POSITIONS = ("learned", "rotary")


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"gpt: {name} must be a positive integer, got {value!r}")
    return value


def build_config(num_classes: int, context: int, layers: int, hidden: int, heads: int, intermediate: int | None,
                 dropout: float, positions: str, tie_embeddings: bool):
    """The transformers config of a `gpt` model, after checking every keyword (a clear ModelError, not a
    transformers assertion deep inside the constructor)."""
    for name, value in (("context", context), ("layers", layers), ("hidden", hidden), ("heads", heads)):
        _positive(name, value)
    if intermediate is not None:
        _positive("intermediate", intermediate)
    if hidden % heads:
        raise ModelError(f"gpt: hidden={hidden} is not divisible by heads={heads}; pick a hidden size that is a "
                         f"multiple of heads (e.g. hidden={heads * max(1, round(hidden / heads))})")
    if positions not in POSITIONS:
        raise ModelError(f"gpt: positions={positions!r}; choose one of {POSITIONS}")
    if positions == "rotary" and (hidden // heads) % 2:
        raise ModelError(f"gpt: rotary positions need an even head size, but hidden/heads = {hidden // heads}; "
                         "change hidden or heads, or use positions: learned")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(f"gpt: dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(tie_embeddings, bool):
        raise ModelError(f"gpt: tie_embeddings must be true or false, got {tie_embeddings!r}")
    inner = intermediate or 4 * hidden
    # no special tokens: a character or BPE vocabulary of the task has none, and an EOS id would stop generation
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if importlib.util.find_spec("transformers") is None:
        raise MissingPackageError("gpt (and lm_small, lm_tiny) are built from Hugging Face transformers configs: pip "
                                  "install 'leankd[text]' (or pip install transformers)")
    if positions == "learned":
        from transformers import GPTBigCodeConfig

        return GPTBigCodeConfig(vocab_size=num_classes, n_positions=context, n_embd=hidden, n_layer=layers,
                                n_head=heads, n_inner=inner, multi_query=False, resid_pdrop=dropout,
                                embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=tie_embeddings,
                                **special)
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=num_classes, max_position_embeddings=context, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       intermediate_size=inner, attention_dropout=dropout, tie_word_embeddings=tie_embeddings,
                       **special)


@register_model
def gpt(num_classes: int, context: int = 256, layers: int = 4, hidden: int = 128, heads: int = 4,
        intermediate: int | None = None, dropout: float = 0.0, positions: str = "learned",
        tie_embeddings: bool = True) -> CausalLM:
    """Decoder-only transformer: GPT-2's block with learned positions, or Llama's with rotary ones; `num_classes`
    is the vocabulary size, `intermediate` the MLP width (default 4 x hidden)."""
    return from_config(build_config(num_classes, context, layers, hidden, heads, intermediate, dropout, positions,
                                    tie_embeddings))


@register_model
def lm_small(num_classes: int, context: int = 64, layers: int = 4, hidden: int = 128, heads: int = 4,
             intermediate: int | None = None, dropout: float = 0.0, positions: str = "learned",
             tie_embeddings: bool = True) -> CausalLM:
    """nanoGPT's CPU Shakespeare-char model: 4 layers, 128 hidden, 4 heads, context 64 (0.81M parameters at V=65)."""
    return gpt(num_classes, context, layers, hidden, heads, intermediate, dropout, positions, tie_embeddings)


@register_model
def lm_tiny(num_classes: int, context: int = 64, layers: int = 2, hidden: int = 48, heads: int = 4,
            intermediate: int | None = None, dropout: float = 0.0, positions: str = "learned",
            tie_embeddings: bool = True) -> CausalLM:
    """A distillation student: 2 layers, 48 hidden, 4 heads, context 64 (63k parameters at V=65, 12.9x fewer than
    lm_small). Picked among sizes with >= 8x fewer parameters, each trained 1,500 steps (batch 32, context 64, AdamW
    lr 1e-3, seed 0) on tinyshakespeare characters, validation nats/char: 2x48 2.013, 3x40 2.004, 4x40 2.000, 2x56
    1.985, 3x48 1.972 (lm_small: 1.769). Extra depth or width bought at most 0.04 nats for 1.2-1.8x the step time
    (1 thread, load ~4: rough) and less room under the 8x bound; the 0.24-nat gap to lm_small leaves distillation
    something to close."""
    return gpt(num_classes, context, layers, hidden, heads, intermediate, dropout, positions, tie_embeddings)
