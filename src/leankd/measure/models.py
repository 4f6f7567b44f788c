"""Measurement orchestration: every model of a report measured by the same code, from the weights saved on disk,
so the ratios in a report compare like with like and describe the artifact a user would ship; plus the report.json
blocks that hold a model's measurements and its training.

`measure_models` (quality + cost + latency + memory of every model and deployment artifact, CPU latency timed
interleaved), `time_on_cpu` (shared with remeasure.py), `model_entry`/`training_entry` (report blocks) and
`environment` (the machine a report was made on).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..kd.losses import Loss
from ..recipe import MeasureConfig, TrainConfig
from ..report.schema import DEFAULT_LABELS
from ..tasks.base import Task
from ..train.loop import FitResult
from .devices import cpu_fp32_copy, to_device
from .latency import interleaved_latency
from .probe import probe_model
from .profile import profile_model


def environment(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(device),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "platform": platform.platform(),
    }


def prepare_for_measuring(model: nn.Module, task: Task) -> nn.Module:
    model = model.to(task.device).float().eval()
    # every model gets the memory layout of the task's inputs, so a teacher loaded from a file (NCHW) is not timed
    # against students trained channels_last (oneDNN convolutions are ~2x apart between the two on CPU)
    sample = task.example_inputs(2)
    if isinstance(sample, torch.Tensor) and sample.dim() == 4:
        channels_last = sample.is_contiguous(memory_format=torch.channels_last) and not sample.is_contiguous()
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model


def measure_models(models: dict[str, nn.Module], task: Task, measure: MeasureConfig,
                   artifacts: Optional[dict[str, tuple[nn.Module, str, Path]]] = None) -> dict[str, dict]:
    """Quality on the eval split + cost/latency/memory of every model — the one way numbers in a report are made.

    `artifacts` maps a role to (runnable, base role, artifact file): deployment artifacts run on the CPU, get
    their quality from the same evaluation, their size from the file, their MACs from the base model, and
    join the interleaved CPU latency timing. CPU latency is timed interleaved across ALL models on the same
    input batches (see `interleaved_latency`), so machine drift cannot masquerade as a speed-up."""
    split = task.eval_split
    artifacts = artifacts or {}
    prepared = {role: prepare_for_measuring(m, task) for role, m in models.items()}
    previous_threads = torch.get_num_threads()
    if measure.threads:
        torch.set_num_threads(measure.threads)
    try:
        out = {}
        for role, model in prepared.items():
            profile = profile_model(model, task.example_inputs, forward=task.forward,
                                    batch_sizes=tuple(measure.latency_batch_sizes), runs=measure.latency_runs,
                                    warmup=measure.latency_warmup, cpu_latency=False)
            out[role] = {"quality": {"split": split, **task.quality(model, split)}, **profile,
                         **task.extra_measurements(model)}
        cpu_models = {role: cpu_fp32_copy(m) for role, m in prepared.items()}
        for role, (runnable, base, path) in artifacts.items():
            size = sum(Path(p).stat().st_size for p in (path if isinstance(path, list) else [path]))
            cost = {**out[base]["cost"], "size_bytes": size, "size_mb": size / 1e6}
            quality = {"split": split, **task.quality(runnable, split, cpu=True)}
            out[role] = {"quality": quality, "cost": cost, "latency": {},
                         "memory": {"inference_peak_mb": None, "inference_delta_mb": None,
                                    "kind": "not measured for deployment artifacts", "batch_size": None}}
            cpu_models[role] = runnable
        for role, timed in time_on_cpu(cpu_models, task, measure).items():
            latency = timed.pop("latency")
            out[role].update(timed)
            out[role]["latency"] = {**latency, **out[role]["latency"]}
    finally:
        torch.set_num_threads(previous_threads)
    for role, model in prepared.items():  # how far each model downsamples: a likely cause in report.sanity's flags
        out[role]["probe"] = probe_model(model, task.example_inputs(1), task.forward)
    return out


def time_on_cpu(cpu_models: dict[str, nn.Module], task: Task, measure: MeasureConfig) -> dict[str, dict]:
    """The CPU timings of a report, all models and artifacts together: the task's joint measurements (seq2seq
    decoding), then the interleaved forward latency. `{role: {"latency": {"cpu": ...}, **joint}}`. Shared by
    `measure_models` and `remeasure_latency`, so a re-measured report is timed exactly like a fresh one."""
    out: dict[str, dict] = {role: {} for role in cpu_models}
    for role, extra in task.joint_measurements(cpu_models).items():
        out[role].update(extra)
    cpu = interleaved_latency(cpu_models, lambda bs: to_device(task.example_inputs(bs), "cpu", torch.float32),
                              measure.latency_batch_sizes, forward=task.forward, runs=measure.latency_runs,
                              warmup=measure.latency_warmup)
    for role in out:
        out[role]["latency"] = {"cpu": cpu[role]}
    return out


def model_entry(role: str, architecture: str, origin: str, measured: dict, training: Optional[dict],
                history: Optional[str]) -> dict:
    """One model's block of report.json."""
    return {"role": role, "label": DEFAULT_LABELS.get(role, role), "architecture": architecture, "origin": origin,
            **measured, "training": training, "history": history}


def training_entry(result: FitResult, loss: Loss, cfg: TrainConfig, device: torch.device,
                   samples_per_example: int = 1) -> dict:
    """The report's training block of one stage. `samples_per_example`: what a batch's size counts per example it
    holds (`Task.samples_per_example`: a causal LM's batch of blocks counts tokens), so steps are counted right."""
    return {
        "epochs": result.epochs,
        "wall_time_s": round(result.wall_time_s, 3),
        "samples_per_s": round(result.samples_per_s, 2),
        "peak_memory_mb": result.peak_memory.get("peak_mb"),
        "memory_kind": result.peak_memory.get("kind"),
        "energy_j": result.energy.get("joules"),
        "energy_source": result.energy.get("source", "not measured"),
        "loss": loss.describe(),
        "precision": cfg.precision,
        "device": str(device),
        "speedups": result.speedups,
        "speedup_notes": result.speedup_notes or None,
        "batch_size": cfg.batch_size,
        "steps": _steps_taken(result.history, cfg.batch_size * samples_per_example),
    }


def _steps_taken(history: list[dict], batch_size: int) -> Optional[int]:
    """Optimizer steps over all epochs, from each epoch's examples (samples/s x epoch time; full batches only)."""
    try:
        return int(sum(max(1, round(r["samples_per_s"] * r["epoch_time_s"] / batch_size)) for r in history))
    except (KeyError, TypeError):
        return None
