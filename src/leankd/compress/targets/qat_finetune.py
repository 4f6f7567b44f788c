"""qat / qat-control: the targets that train. Quantization-aware distillation (compress/qat.py) fine-tunes the
student with int8 fake quantization while the teacher keeps distilling, then goes through the same ONNX Runtime
static int8 path as int8-static; qat-control is its same-budget control (the same fine-tuning in fp32, then
int8-static). Both take the teacher, loss and schedule from `ctx.finetune` (the recipe's student stage).

Each registers its fine-tuning alone as well (`qat_finetune`, `qat_control_finetune`): under torchrun every rank runs
it data-parallel before rank 0 builds the artifact from its outcome (`ctx.trained`; compress/run.py), so the export
and ONNX Runtime's int8 conversion happen once while the training used every process."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import nn

from . import BuildContext, BuiltArtifact, calibration, register_target
from .onnx_runtime import ONNX, export, ort_int8

if TYPE_CHECKING:
    from ...recipe import TrainConfig
    from ...train.loop import FitResult


def _finetune(model: nn.Module, ctx: BuildContext, name: str, cfg: Optional[TrainConfig] = None,
              watch: Optional[Callable[[Any], Any]] = None) -> tuple[FitResult, Path]:
    """`fit` with the finetune's loss and teacher; `watch(display_hook) -> hook` may wrap the progress display."""
    from ...core import dist
    from ...train.loop import fit

    ft = ctx.finetune
    metrics = ctx.out_dir / f"{name}-metrics.jsonl"
    if dist.is_main():  # under torchrun rank 0 writes (fit too)
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


@dataclass
class QATTrained:
    """The outcome of QAT's fine-tuning (attempts, retries and all): the fine-tuned fake-quantized model, or None when
    every attempt diverged."""

    prepared: Optional[Any]  # QATModel
    cfg: Optional[TrainConfig]
    start: Optional[Any]  # StartPoint of the attempt that held
    result: Optional[FitResult]
    metrics: Optional[Path]
    diverged: list[str]
    spent: float


def qat_finetune(model: nn.Module, ctx: BuildContext) -> QATTrained:
    """QAT's fine-tuning: calibrate, fake-quantize, distil; an attempt that diverges is retried at a tenth of the lr,
    `retries` times. Under torchrun every rank runs this in lockstep (compress/run.py): the observers see the global
    batch's range (qat.py), the divergence watch stops every rank at the same step (qat_guard.py) and rank 0 measures
    the start and writes the files."""
    import time

    from ...core import dist
    from ..qat import prepare_qat
    from ..qat_guard import DivergenceWatch, QATDiverged, measure_start

    ft = ctx.finetune
    batches = calibration(ctx.task, ctx.calibration_batches, model)
    diverged: list[str] = []
    spent = 0.0
    for attempt in range(ft.retries + 1):
        cfg = ft.cfg.model_copy(update={"lr": ft.cfg.lr / 10 ** attempt})
        prepared = prepare_qat(model)
        prepared.calibrate(batches, ctx.task.forward)  # every rank the same batches: the same ranges
        prepared.set_quantize(True)
        start = dist.on_main(lambda: measure_start(prepared.model, ctx.task, ft.loss, ft.teacher, cfg.batch_size,
                                                   ft.seed, cfg.precision))
        t0 = time.perf_counter()
        try:
            result, metrics = _finetune(prepared.model, ctx, "qat", cfg, watch=lambda inner: DivergenceWatch(
                start, prepared.model, ctx.task, loss_factor=ft.loss_factor, margin_points=ft.divergence_margin,
                inner=inner))
        except QATDiverged as e:
            spent += time.perf_counter() - t0
            history = ctx.out_dir / "qat-metrics.jsonl"
            if dist.is_main() and history.exists():  # its finished epochs, kept beside the artifact
                history.replace(ctx.out_dir / f"qat-diverged-{attempt + 1}-metrics.jsonl")
            diverged.append(f"lr {cfg.lr:g}: {e.reason}")
            if ft.log:
                retry = (f"retrying at lr {cfg.lr / 10:g}" if attempt < ft.retries
                         else "keeping the int8-static model as the qat artifact")
                ft.log(f"[bold yellow]warning:[/] qat diverged at lr {cfg.lr:g} ({e.reason}); {retry}")
            continue
        return QATTrained(prepared, cfg, start, result, metrics, diverged, spent)
    return QATTrained(None, None, None, None, None, diverged, spent)


@register_target("qat", trains=True, needs=ONNX, finetune=qat_finetune,
                 description="quantization-aware distillation: fine-tuned with int8 fake quantization and the "
                             "teacher, then ONNX Runtime static int8 (reported beside int8-static and qat-control)")
def qat(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    """Quantization-aware distillation (see qat.py), exported through the same ORT static path as int8-static.

    Guarded (qat_guard.py): an attempt whose loss rises or whose accuracy falls below the fake-quantized starting
    point (= PTQ) is stopped and retried at a tenth of the lr, `retries` times; if every attempt diverged, the
    artifact is the int8-static model of the same student, and its notes say so. The fine-tuning (`qat_finetune`)
    has run already when `ctx.trained` holds its outcome (under torchrun)."""
    ft = ctx.finetune
    trained = ctx.trained if ctx.trained is not None else qat_finetune(model, ctx)
    if trained.prepared is None:
        return _qat_fallback(model, ctx, trained.diverged, trained.spent)
    prepared, cfg = trained.prepared, trained.cfg
    float_model = prepared.strip().cpu().eval()
    art = ort_int8(export(float_model, ctx, "qat-fp32.onnx"), ctx.out_dir / "qat-int8.onnx", ctx, "static",
                   float_model)
    art.notes = [f"QAT: {_describe_finetune(ctx, cfg)}, with int8 fake quantization of {len(prepared.quantized)} "
                 f"Conv/Linear weights and inputs on ONNX Runtime's grid; {prepared.folded_batchnorms} "
                 f"BatchNorm(s) folded first", *prepared.notes, _start_note(trained.start), *art.notes]
    if trained.diverged:
        art.notes.append(f"QAT diverged first ({'; '.join(trained.diverged)}; {trained.spent:.0f} s spent) and was "
                         f"retried at lr {cfg.lr:g}, which held; the same-budget control (qat-control) keeps lr "
                         f"{ft.cfg.lr:g}")
    art.training, art.metrics_path = trained.result, trained.metrics
    return art


def _start_note(start) -> str:
    acc = "" if start.accuracy is None else (
        f", {start.split} accuracy {100 * start.accuracy:.2f}% on {start.examples} examples")
    return (f"divergence guard: the fake-quantized student started at loss {start.loss:.4g}{acc}; training stops "
            "if the loss rises or the accuracy falls below that start (then a lower lr, then int8-static)")


def _qat_fallback(model: nn.Module, ctx: BuildContext, diverged: list[str], spent: float) -> BuiltArtifact:
    """Every QAT attempt diverged: the qat artifact is the int8-static (PTQ) model of the untouched student, so the
    report never shows a collapsed model as QAT's result - and it says that this is not QAT."""
    art = ort_int8(export(model, ctx, "qat-fp32.onnx"), ctx.out_dir / "qat-int8.onnx", ctx, "static", model)
    kept = sorted(p.name for p in ctx.out_dir.glob("qat-diverged-*-metrics.jsonl"))
    epochs = f"; the diverged attempts' finished epochs are in compressed/{', '.join(kept)}" if kept else ""
    art.notes = [f"QAT FELL BACK TO int8-static: quantization-aware fine-tuning diverged at every lr tried "
                 f"({'; '.join(diverged)}; {spent:.0f} s spent), so this artifact is the int8-static (PTQ) model of "
                 f"the same student, not a QAT one. Try a smaller compress.qat.lr or more compress.qat.retries{epochs}",
                 *art.notes]
    return art


def qat_control_finetune(model: nn.Module, ctx: BuildContext) -> tuple[nn.Module, FitResult, Path]:
    """qat-control's fine-tuning: the same schedule as QAT's in fp32 (under torchrun on every rank)."""
    result, metrics = _finetune(model, ctx, "qat-control")
    return model, result, metrics


@register_target("qat-control", trains=True, needs=ONNX, finetune=qat_control_finetune,
                 description="the same fine-tuning as qat in fp32, then int8-static: what qat's fake quantization "
                             "bought, at the same training budget")
def qat_control(model: nn.Module, ctx: BuildContext) -> BuiltArtifact:
    """The same-budget control for QAT: the same fine-tuning in fp32, then plain int8-static. QAT minus this is what
    the fake quantization bought; QAT minus int8-static mixes that with the extra training."""
    model, result, metrics = ctx.trained if ctx.trained is not None else qat_control_finetune(model, ctx)
    model = model.cpu().eval()
    art = ort_int8(export(model, ctx, "qat-control-fp32.onnx"), ctx.out_dir / "qat-control-int8.onnx", ctx,
                   "static", model)
    art.notes = [f"same-budget control for QAT: {_describe_finetune(ctx)} in fp32, then int8-static", *art.notes]
    art.training, art.metrics_path = result, metrics
    return art
