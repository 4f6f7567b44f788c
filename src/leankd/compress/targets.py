"""Deployment targets: each turns the trained fp32 model into an artifact file plus a runnable that looks like a
model (`runnable(inputs) -> fp32 logits`), so the task's own evaluation and the one latency harness measure it
exactly like the fp32 model. One function per target, `build(model, ctx) -> BuiltArtifact`; `TARGETS` maps the
recipe's names to them. Targets that train (`qat`, `qat-control`) take the teacher, loss and schedule from
`ctx.finetune`."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import LeanKDError
from ..kd.losses import Loss
from ..measure.devices import to_device
from ..recipe import TrainConfig
from ..tasks.base import Task
from ..train.loop import FitResult, fit


@dataclass
class BuiltArtifact:
    runnable: nn.Module
    path: Path
    format: str  # "torch" | "onnx"
    quantized: Optional[list[str]] = None
    left_in_float: Optional[dict[str, str]] = None
    notes: list[str] = field(default_factory=list)
    training: Optional[FitResult] = None  # targets that fine-tune (qat, qat-control)
    metrics_path: Optional[Path] = None
    params: Optional[int] = None  # set by targets that change the parameter count (vocab-trim); else the base's
    files: Optional[list[Path]] = None  # an artifact of several files (seq2seq ONNX: encoder + decoder step)


@dataclass
class Finetune:
    """What a training target needs: the distillation that made the student, continued for a few epochs."""

    cfg: TrainConfig
    loss: Loss
    teacher: Optional[Any] = None  # a LiveTeacher when the loss needs one
    seed: int = 0
    progress: Optional[Callable[[str], Any]] = None  # name -> progress hook for fit()
    log: Optional[Callable[[str], Any]] = None  # console line (a QAT attempt that diverged is said as it happens)
    # QAT's divergence guard (qat_guard.py; recipe compress.qat): retries at lr/10, then int8-static
    retries: int = 2
    divergence_margin: float = 2.0  # accuracy points below the fake-quantized start
    loss_factor: float = 2.0  # running loss above this x its start


@dataclass
class BuildContext:
    task: Task
    out_dir: Path
    calibration_batches: int = 8
    finetune: Optional[Finetune] = None


def _cpu_inputs(task: Task, batch_size: int, model: nn.Module) -> Any:
    """What `model` takes from a batch of typical inputs (text: its own tokenization), on the CPU."""
    return to_device(task.model_inputs(model, task.example_inputs(batch_size)), "cpu", torch.float32)


def _calibration(task: Task, batches: int, model: nn.Module, batch_size: int = 64) -> list:
    """Un-augmented training batches (never the eval split: calibrating on test data would leak it)."""
    return [to_device(task.model_inputs(model, b.inputs), "cpu", torch.float32)
            for b in islice(task.eval_batches("train", batch_size), batches)]


def _half(precision: str):
    def build(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
        from .precision import save_half, to_precision

        wrapped = to_precision(model, precision)
        path = ctx.out_dir / f"{precision}.safetensors"
        save_half(path, wrapped)
        note = (f"{precision} weights halve the file; its CPU latency is measured as is, and CPUs without native "
                f"{precision} math (most x86 without AVX-512 FP16/BF16) emulate it slowly: the artifact is meant for "
                "GPUs and NPUs")
        return BuiltArtifact(wrapped, path, "torch", notes=[note])

    return build


def _size_note(path: Path, model: nn.Module) -> str:
    """The saved file against the fp32 tensors it replaces (each shared tensor counted once, as a file stores it)."""
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()
               if isinstance(t, torch.Tensor)}
    fp32, size = sum(tensors.values()), path.stat().st_size
    return f"file {size:,} bytes against {fp32:,} bytes of fp32 tensors ({fp32 / max(size, 1):.2f}x smaller)"


def _int8_dynamic(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    from .quantize import embedding_notes, quantize_dynamic_int8, save_quantized

    # with example inputs, a module whose int8 version breaks the forward pass is put back in float and named
    result = quantize_dynamic_int8(model, example_inputs=_cpu_inputs(ctx.task, 2, model),
                                  forward=ctx.task.forward)
    path = ctx.out_dir / "int8-dynamic.pt"
    save_quantized(path, result.model)
    notes = []
    if not result.quantized:
        notes.append("no Linear/GRU/LSTM/Embedding module to quantize: the artifact is the float model (use "
                     "int8-static)")
    notes += [*embedding_notes(result, model), _size_note(path, model)]
    return BuiltArtifact(result.model, path, "torch", result.quantized, result.skipped, notes)


def _vocab_trim(int8: bool):
    """Text students: the word embedding cut to the tokens of the training texts (compress/vocab.py), then
    optionally int8-dynamic like `int8-dynamic` (the trimmed embedding is int8 too, so the two savings multiply)."""
    def build(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
        from ..train.checkpoint import save_weights
        from .quantize import embedding_notes, quantize_dynamic_int8, save_quantized
        from .vocab import trim_vocabulary

        if not hasattr(ctx.task, "tokens_in_use"):
            raise LeanKDError(f"vocab-trim applies to text students; this run's task is {ctx.task.kind}")
        keep, unk = ctx.task.tokens_in_use(model)
        trimmed = trim_vocabulary(model, keep, unk).eval()
        params = sum(p.numel() for p in trimmed.parameters())
        note = (f"vocabulary trimmed to the {trimmed.kept_tokens} tokens of the training texts (+ specials) out of "
                f"{trimmed.original_tokens}; other tokens read as [UNK]; {params:,} parameters left")
        if not int8:
            path = ctx.out_dir / "vocab-trim.safetensors"
            save_weights(path, trimmed)
            return BuiltArtifact(trimmed, path, "torch", notes=[note], params=params)
        result = quantize_dynamic_int8(trimmed, example_inputs=_cpu_inputs(ctx.task, 2, model),
                                       forward=ctx.task.forward)
        path = ctx.out_dir / "vocab-trim-int8.pt"
        save_quantized(path, result.model)
        notes = [note, *embedding_notes(result, trimmed), _size_note(path, trimmed)]
        return BuiltArtifact(result.model, path, "torch", result.quantized, result.skipped, notes, params=params)

    return build


def _export(model: nn.Module, ctx: BuildContext, name: str = "fp32.onnx") -> Path:
    from .onnx import export_onnx

    path = ctx.out_dir / name
    export_onnx(model, _cpu_inputs(ctx.task, 2, model), path, forward=ctx.task.forward,
                dynamic_dims=ctx.task.dynamic_dims())
    return path


def _seq2seq_onnx(model: nn.Module, ctx: BuildContext, int8: bool) -> BuiltArtifact:
    """Encoder + one decoder step as two ONNX files, decoded by leankd's loop through ONNX Runtime."""
    from .onnx_seq2seq import OnnxSeq2Seq, export_seq2seq_onnx, quantize_seq2seq_onnx

    # rows of different lengths plus one padding column: the exporter must not tie the source axis to any length
    inputs = _cpu_inputs(ctx.task, 8, model)
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
    runnable = OnnxSeq2Seq(*files)
    check = _cpu_inputs(ctx.task, 3, model)  # another batch size and source length: fails here, not when measured
    state = runnable.encode(torch.nn.functional.pad(check["src"], (0, 3)), check["src_len"])
    runnable.step(torch.ones(len(check["src_len"]), dtype=torch.long), *state)
    return BuiltArtifact(runnable, files[1], "onnx", ["LSTM", "MatMul", "Gemm"] if int8 else None, left, notes,
                         files=list(files))


def _onnx_fp32(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    from .onnx import OnnxModel

    if hasattr(model, "encode") and hasattr(model, "step"):
        return _seq2seq_onnx(model, ctx, int8=False)
    path = _export(model, ctx)
    return BuiltArtifact(OnnxModel(path), path, "onnx")


def _ort_int8(src: Path, dst: Path, ctx: BuildContext, mode: str, model: nn.Module) -> BuiltArtifact:
    from .onnx import OnnxModel, quantize_onnx_dynamic, quantize_onnx_static

    if mode == "static":
        # QOperator: same accuracy and speed as QDQ on this x86 CPU (measured on resnet20) with an ~18 % smaller
        # file; QDQ (quantize_onnx_static's default) is the more portable choice for other runtimes
        info = quantize_onnx_static(src, dst, _calibration(ctx.task, ctx.calibration_batches, model),
                                    quant_format="QOperator")
    else:
        info = quantize_onnx_dynamic(src, dst)
    quantized = [f"{op} x {n}" for op, n in (info.get("quantized_ops") or {}).items()]
    left = {op: f"{n} node(s) kept in float by ONNX Runtime" for op, n in (info.get("float_ops") or {}).items()}
    note = _float_lookup_note(dst)
    return BuiltArtifact(OnnxModel(dst), dst, "onnx", quantized, left, [note] if note else [])


def _float_lookup_note(path: Path) -> Optional[str]:
    """ORT's int8 modes used here do not quantize Gather (an embedding lookup): when a float table is still looked
    up in the int8 graph, say what share of the file's weights it is, so a small size gain is not a mystery."""
    import math

    from onnx import TensorProto, helper

    from .onnx_common import load_proto

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


def _onnx_int8(mode: str):
    def build(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
        if hasattr(model, "encode") and hasattr(model, "step"):
            if mode == "dynamic":
                return _seq2seq_onnx(model, ctx, int8=True)
            raise LeanKDError("int8-static exports one graph with calibrated activations; a seq2seq model decodes "
                              "step by step: use int8-dynamic (PyTorch) or onnx-int8-dynamic (ONNX Runtime)")
        src = ctx.out_dir / "fp32.onnx"
        if not src.exists():
            src = _export(model, ctx)
        return _ort_int8(src, ctx.out_dir / f"int8-{mode}.onnx", ctx, mode, model)

    return build


def _needs_finetune(ctx: BuildContext, name: str) -> Finetune:
    if ctx.finetune is None:
        raise LeanKDError(f"compression target {name} fine-tunes the student with its teacher: it runs from a recipe "
                          "(`leankd run` / `leankd compress RUN_DIR --to qat`), which supplies the teacher and loss")
    return ctx.finetune


def _finetune(model: nn.Module, ctx: BuildContext, name: str, cfg: Optional[TrainConfig] = None,
              watch: Optional[Callable[[Any], Any]] = None) -> tuple[FitResult, Path]:
    """`fit` with the finetune's loss and teacher; `watch(display_hook) -> hook` may wrap the progress display."""
    ft = _needs_finetune(ctx, name)
    metrics = ctx.out_dir / f"{name}-metrics.jsonl"
    metrics.unlink(missing_ok=True)
    progress = ft.progress(name) if ft.progress else None
    if watch is not None:
        progress = watch(progress)
    result = fit(model, ctx.task, cfg or ft.cfg, loss=ft.loss, teacher=ft.teacher, seed=ft.seed,
                 metrics_path=metrics, progress=progress)
    return result, metrics


def _describe_finetune(ctx: BuildContext, cfg: Optional[TrainConfig] = None) -> str:
    ft = ctx.finetune
    cfg = cfg or ft.cfg
    return (f"{cfg.epochs} epoch(s) of fine-tuning with the distillation loss {ft.loss.describe()}, "
            f"{cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), teacher {'live' if ft.teacher else 'none'}")


def _qat(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    """Quantization-aware distillation (see qat.py), exported through the same ORT static path as int8-static.

    Guarded (qat_guard.py): an attempt whose loss rises or whose accuracy falls below the fake-quantized starting
    point (= PTQ) is stopped and retried at a tenth of the lr, `retries` times; if every attempt diverges, the
    artifact is the int8-static model of the same student, and its notes say so."""
    import time

    from .qat import prepare_qat
    from .qat_guard import DivergenceWatch, QATDiverged, measure_start

    ft = _needs_finetune(ctx, "qat")
    calibration = _calibration(ctx.task, ctx.calibration_batches, model)
    diverged: list[str] = []
    spent = 0.0
    for attempt in range(ft.retries + 1):
        cfg = ft.cfg.model_copy(update={"lr": ft.cfg.lr / 10 ** attempt})
        qat = prepare_qat(model)
        qat.calibrate(calibration, ctx.task.forward)
        qat.set_quantize(True)
        start = measure_start(qat.model, ctx.task, ft.loss, ft.teacher, cfg.batch_size, ft.seed, cfg.precision)
        t0 = time.perf_counter()
        try:
            result, metrics = _finetune(qat.model, ctx, "qat", cfg, watch=lambda inner: DivergenceWatch(
                start, qat.model, ctx.task, loss_factor=ft.loss_factor, margin_points=ft.divergence_margin,
                inner=inner))
        except QATDiverged as e:
            spent += time.perf_counter() - t0
            history = ctx.out_dir / "qat-metrics.jsonl"
            if history.exists():  # its finished epochs, kept beside the artifact
                history.replace(ctx.out_dir / f"qat-diverged-{attempt + 1}-metrics.jsonl")
            diverged.append(f"lr {cfg.lr:g}: {e.reason}")
            if ft.log:
                retry = (f"retrying at lr {cfg.lr / 10:g}" if attempt < ft.retries
                         else "keeping the int8-static model as the qat artifact")
                ft.log(f"[bold yellow]warning:[/] qat diverged at lr {cfg.lr:g} ({e.reason}); {retry}")
            continue
        float_model = qat.strip().cpu().eval()
        art = _ort_int8(_export(float_model, ctx, "qat-fp32.onnx"), ctx.out_dir / "qat-int8.onnx", ctx, "static",
                        float_model)
        art.notes = [f"QAT: {_describe_finetune(ctx, cfg)}, with int8 fake quantization of {len(qat.quantized)} "
                     f"Conv/Linear weights and inputs on ONNX Runtime's grid; {qat.folded_batchnorms} BatchNorm(s) "
                     f"folded first", *qat.notes, _start_note(start), *art.notes]
        if diverged:
            art.notes.append(f"QAT diverged first ({'; '.join(diverged)}; {spent:.0f} s spent) and was retried at lr "
                             f"{cfg.lr:g}, which held; the same-budget control (qat-control) keeps lr {ft.cfg.lr:g}")
        art.training, art.metrics_path = result, metrics
        return art
    return _qat_fallback(model, ctx, diverged, spent)


def _start_note(start) -> str:
    acc = "" if start.accuracy is None else (
        f", {start.split} accuracy {100 * start.accuracy:.2f}% on {start.examples} examples")
    return (f"divergence guard: the fake-quantized student started at loss {start.loss:.4g}{acc}; training stops "
            "if the loss rises or the accuracy falls below that start (then a lower lr, then int8-static)")


def _qat_fallback(model: nn.Module, ctx: BuildContext, diverged: list[str], spent: float) -> BuiltArtifact:
    """Every QAT attempt diverged: the qat artifact is the int8-static (PTQ) model of the untouched student, so the
    report never shows a collapsed model as QAT's result - and it says that this is not QAT."""
    art = _ort_int8(_export(model, ctx, "qat-fp32.onnx"), ctx.out_dir / "qat-int8.onnx", ctx, "static", model)
    kept = sorted(p.name for p in ctx.out_dir.glob("qat-diverged-*-metrics.jsonl"))
    epochs = f"; the diverged attempts' finished epochs are in compressed/{', '.join(kept)}" if kept else ""
    art.notes = [f"QAT FELL BACK TO int8-static: quantization-aware fine-tuning diverged at every lr tried "
                 f"({'; '.join(diverged)}; {spent:.0f} s spent), so this artifact is the int8-static (PTQ) model of "
                 f"the same student, not a QAT one. Try a smaller compress.qat.lr or more compress.qat.retries{epochs}",
                 *art.notes]
    return art


def _qat_control(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    """The same-budget control for QAT: the same fine-tuning in fp32, then plain int8-static. QAT minus this is what
    the fake quantization bought; QAT minus int8-static mixes that with the extra training."""
    result, metrics = _finetune(model, ctx, "qat-control")
    model = model.cpu().eval()
    art = _ort_int8(_export(model, ctx, "qat-control-fp32.onnx"), ctx.out_dir / "qat-control-int8.onnx", ctx,
                    "static", model)
    art.notes = [f"same-budget control for QAT: {_describe_finetune(ctx)} in fp32, then int8-static", *art.notes]
    art.training, art.metrics_path = result, metrics
    return art


TARGETS: dict[str, Callable[[nn.Module, BuildContext], BuiltArtifact]] = {
    "fp16": _half("fp16"),
    "bf16": _half("bf16"),
    "int8-dynamic": _int8_dynamic,
    "onnx": _onnx_fp32,
    "int8-static": _onnx_int8("static"),  # ONNX Runtime QDQ: the maintained static path for CNNs on CPU
    "onnx-int8-dynamic": _onnx_int8("dynamic"),
    "qat": _qat,  # quantization-aware distillation -> ORT static int8
    "qat-control": _qat_control,
    "vocab-trim": _vocab_trim(int8=False),  # text: embedding rows of the training texts' tokens only
    "vocab-trim-int8": _vocab_trim(int8=True),
}
TRAINING_TARGETS = frozenset({"qat", "qat-control"})


def build_artifact(target: str, model: nn.Module, task: Task, out_dir: Path, calibration_batches: int = 8,
                   finetune: Optional[Finetune] = None) -> BuiltArtifact:
    if target not in TARGETS:
        raise LeanKDError(f"unknown compression target {target!r}; known: {', '.join(TARGETS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    art = TARGETS[target](model, BuildContext(task, out_dir, calibration_batches, finetune))
    if hasattr(model, "input_encoding"):  # which of a text task's tokenizations the artifact reads
        art.runnable.input_encoding = model.input_encoding
    return art


@torch.no_grad()
def max_abs_diff(reference: nn.Module, artifact: nn.Module, task: Task, forward) -> float:
    """Largest logit difference between the fp32 model and the artifact on one eval batch (64 inputs)."""
    inputs = to_device(task.example_inputs(64), "cpu", torch.float32)  # each model takes its own part (text)
    ref = copy.deepcopy(reference).cpu().float().eval()
    return float((forward(ref, inputs).float() - forward(artifact, inputs).float()).abs().max())
