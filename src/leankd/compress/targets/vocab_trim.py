"""vocab-trim / vocab-trim-int8 (text students): the word embedding cut to the tokens of the training texts
(compress/vocab.py), then optionally int8-dynamic like `int8-dynamic` (the trimmed embedding is int8 too, so the two
savings multiply)."""
from __future__ import annotations

from torch import nn

from . import BuildContext, BuiltArtifact, Unsupported, cpu_inputs, register_target, size_note


def _vocab_trim(model: nn.Module, ctx: BuildContext, int8: bool) -> BuiltArtifact:
    from ...train.checkpoint import save_weights
    from ..quantize import embedding_notes, quantize_dynamic_int8, save_quantized
    from ..vocab import trim_vocabulary

    if not hasattr(ctx.task, "tokens_in_use"):
        raise Unsupported(f"vocab-trim applies to text students; this run's task is {ctx.task.kind}")
    keep, unk = ctx.task.tokens_in_use(model)
    trimmed = trim_vocabulary(model, keep, unk).eval()
    params = sum(p.numel() for p in trimmed.parameters())
    note = (f"vocabulary trimmed to the {trimmed.kept_tokens} tokens of the training texts (+ specials) out of "
            f"{trimmed.original_tokens}; other tokens read as [UNK]; {params:,} parameters left")
    if not int8:
        path = ctx.out_dir / "vocab-trim.safetensors"
        save_weights(path, trimmed)
        return BuiltArtifact(trimmed, path, "torch", notes=[note], params=params)
    result = quantize_dynamic_int8(trimmed, example_inputs=cpu_inputs(ctx.task, 2, model),
                                   forward=ctx.task.forward)
    path = ctx.out_dir / "vocab-trim-int8.pt"
    save_quantized(path, result.model)
    notes = [note, *embedding_notes(result, trimmed), size_note(path, trimmed)]
    return BuiltArtifact(result.model, path, "torch", result.quantized, result.skipped, notes, params=params)


@register_target("vocab-trim", description="text students: the word embedding keeps only the training texts' tokens "
                                           "(others read as [UNK])")
def vocab_trim(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    return _vocab_trim(model, ctx, int8=False)


@register_target("vocab-trim-int8", description="vocab-trim, then int8-dynamic (the trimmed embedding is int8 too)")
def vocab_trim_int8(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    return _vocab_trim(model, ctx, int8=True)
