"""int8-dynamic: PyTorch dynamic int8 of Linear/GRU/LSTM and per-row int8 embeddings (compress/quantize.py)."""
from __future__ import annotations

from torch import nn

from . import BuildContext, BuiltArtifact, cpu_inputs, register_target, size_note


@register_target("int8-dynamic", description="PyTorch dynamic int8 of Linear/GRU/LSTM/Embedding weights (convolutions "
                                             "stay float: use int8-static)")
def int8_dynamic(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    from ..quantize import embedding_notes, quantize_dynamic_int8, save_quantized

    # with example inputs, a module whose int8 version breaks the forward pass is put back in float and named
    result = quantize_dynamic_int8(model, example_inputs=cpu_inputs(ctx.task, 2, model),
                                   forward=ctx.task.forward)
    path = ctx.out_dir / "int8-dynamic.pt"
    save_quantized(path, result.model)
    notes = []
    if not result.quantized:
        notes.append("no Linear/GRU/LSTM/Embedding module to quantize: the artifact is the float model (use "
                     "int8-static)")
    notes += [*embedding_notes(result, model), size_note(path, model)]
    return BuiltArtifact(result.model, path, "torch", result.quantized, result.skipped, notes)
