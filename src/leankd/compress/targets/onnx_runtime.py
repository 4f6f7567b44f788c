"""onnx / int8-static / onnx-int8-dynamic: the model exported to ONNX (compress/onnx.py) and run by ONNX Runtime,
in fp32 or quantized to int8 by ONNX Runtime (static: calibrated on training batches; dynamic: weights only).
Seq2seq models export as two graphs, the encoder and one decoder step, decoded by leankd's own loop."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import BuildContext, BuiltArtifact, Unsupported, calibration, cpu_inputs, register_target

ONNX = ("onnx", "onnxscript", "onnxruntime")  # the `deploy` extras


def export(model: nn.Module, ctx: BuildContext, name: str = "fp32.onnx") -> Path:
    """`model` as one ONNX graph at `ctx.out_dir / name`, its batch (and the task's dynamic) axes left free."""
    from ..onnx import export_onnx
    from ..onnx_metadata import onnx_metadata

    path = ctx.out_dir / name
    export_onnx(model, cpu_inputs(ctx.task, 2, model), path, forward=ctx.task.forward,
                dynamic_dims=ctx.task.dynamic_dims(), metadata=onnx_metadata(ctx.task, model))
    return path


def _seq2seq_onnx(model: nn.Module, ctx: BuildContext, int8: bool) -> BuiltArtifact:
    """Encoder + one decoder step as two ONNX files, decoded by leankd's loop through ONNX Runtime."""
    from ..onnx_seq2seq import OnnxSeq2Seq, export_seq2seq_onnx, quantize_seq2seq_onnx

    # rows of different lengths plus one padding column: the exporter must not tie the source axis to any length
    inputs = cpu_inputs(ctx.task, 8, model)
    src = torch.nn.functional.pad(inputs["src"], (0, 1))
    files = export_seq2seq_onnx(model, src, inputs["src_len"], ctx.out_dir)
    notes = ["two graphs: the encoder and one decoder step (state in, state out); greedy / beam search run in "
             "Python around them, the same code as for the PyTorch model"]
    left = None
    if int8:
        files = quantize_seq2seq_onnx(*files, ctx.out_dir)
        notes += [n for n in map(_float_lookup_note, files) if n]
        if getattr(model, "cell", None) == "gru":
            left = {"GRU": "ONNX Runtime dynamic quantization covers LSTM, MatMul and Gemm, not GRU"}
    from ..onnx_metadata import onnx_metadata, write_metadata

    for f in files:  # both graphs say how their inputs are made (the source and target symbols)
        write_metadata(f, {**onnx_metadata(ctx.task, model), "graph": "encoder" if f == files[0] else "decoder step"})
    runnable = OnnxSeq2Seq(*files)
    check = cpu_inputs(ctx.task, 3, model)  # another batch size and source length: fails here, not when measured
    state = runnable.encode(torch.nn.functional.pad(check["src"], (0, 3)), check["src_len"])
    runnable.step(torch.ones(len(check["src_len"]), dtype=torch.long), *state)
    return BuiltArtifact(runnable, files[1], "onnx", ["LSTM", "MatMul", "Gemm"] if int8 else None, left, notes,
                         files=list(files))


def _is_seq2seq(model: nn.Module) -> bool:
    return hasattr(model, "encode") and hasattr(model, "step")


def ort_int8(src: Path, dst: Path, ctx: BuildContext, mode: str, model: nn.Module) -> BuiltArtifact:
    """The ONNX file `src` quantized by ONNX Runtime into `dst` (`mode` "static": calibrated on `model`'s training
    batches; "dynamic": weights only), as an artifact that runs `dst`."""
    from ..onnx import OnnxModel, quantize_onnx_dynamic, quantize_onnx_static
    from ..onnx_metadata import copy_metadata

    if mode == "static":
        # QOperator: same accuracy and speed as QDQ on this x86 CPU (measured on resnet20) with an ~18 % smaller
        # file; QDQ (quantize_onnx_static's default) is the more portable choice for other runtimes
        info = quantize_onnx_static(src, dst, calibration(ctx.task, ctx.calibration_batches, model),
                                    quant_format="QOperator")
    else:
        info = quantize_onnx_dynamic(src, dst)
    copy_metadata(src, dst)  # the int8 file is fed exactly like the fp32 one
    quantized = [f"{op} x {n}" for op, n in (info.get("quantized_ops") or {}).items()]
    left = {op: f"{n} node(s) kept in float by ONNX Runtime" for op, n in (info.get("float_ops") or {}).items()}
    note = _float_lookup_note(dst)
    return BuiltArtifact(OnnxModel(dst), dst, "onnx", quantized, left, [note] if note else [])


def _float_lookup_note(path: Path) -> Optional[str]:
    """ORT's int8 modes used here do not quantize Gather (an embedding lookup): when a float table is still looked
    up in the int8 graph, say what share of the file's weights it is, so a small size gain is not a mystery."""
    import math

    from onnx import TensorProto, helper

    from ..onnx_common import load_proto

    try:
        graph = load_proto(path, external=True).graph
        nbytes = {t.name: math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                  for t in graph.initializer}
    except Exception as e:  # noqa: BLE001 - a note must not cost the artifact
        return f"{path.name}: could not check whether embedding lookups stay fp32 ({type(e).__name__}: {e})"
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in floats
              and nbytes[n.input[0]] >= 4096}  # a table, not a handful of constants
    if not tables:
        return None
    share = sum(nbytes[t] for t in tables) / max(sum(nbytes.values()), 1)
    return (f"{len(tables)} embedding table(s) looked up by Gather stay fp32 in {path.name} (about "
            f"{share:.0%} of its weight bytes): ONNX Runtime's int8 here quantizes the matrix products, not the "
            "lookups; int8-dynamic (PyTorch) stores embeddings as int8")


@register_target("onnx", description="fp32 ONNX graph run by ONNX Runtime (seq2seq: encoder + decoder step)",
                 needs=ONNX)
def onnx_fp32(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    from ..onnx import OnnxModel

    if _is_seq2seq(model):
        return _seq2seq_onnx(model, ctx, int8=False)
    path = export(model, ctx)
    return BuiltArtifact(OnnxModel(path), path, "onnx")


def _onnx_int8(model: nn.Module, ctx: BuildContext, mode: str) -> BuiltArtifact:
    src = ctx.out_dir / "fp32.onnx"
    if not src.exists():
        src = export(model, ctx)
    return ort_int8(src, ctx.out_dir / f"int8-{mode}.onnx", ctx, mode, model)


# ONNX Runtime QOperator int8 calibrated on training batches: the maintained static path for CNNs on CPU
@register_target("int8-static", description="ONNX Runtime static int8 (weights and activations, calibrated on "
                                            "training batches): convolutions too", needs=ONNX)
def int8_static(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    if _is_seq2seq(model):
        raise Unsupported("int8-static exports one graph with calibrated activations; a seq2seq model decodes "
                          "step by step: use int8-dynamic (PyTorch) or onnx-int8-dynamic (ONNX Runtime)")
    return _onnx_int8(model, ctx, "static")


@register_target("onnx-int8-dynamic", description="ONNX Runtime dynamic int8 (weights only; MatMul/Gemm/LSTM)",
                 needs=ONNX)
def onnx_int8_dynamic(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    if _is_seq2seq(model):
        return _seq2seq_onnx(model, ctx, int8=True)
    return _onnx_int8(model, ctx, "dynamic")
