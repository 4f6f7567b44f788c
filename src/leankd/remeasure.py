"""`leankd report RUN --remeasure`: time a finished run's models again, from the weights on disk, and replace its
report's timings — for a report whose timings were flagged as noisy (`measure.timing`), or that was made on a busy
machine or with other thread settings.

Why a command of its own and not `leankd run` again: a re-run deletes the old report first and rebuilds every
compression artifact (QAT fine-tunes again); re-measuring must only re-time. Everything is timed in memory first;
report.json and report.md are replaced (each atomically) only once the new report is complete and valid, so a
re-measure that fails or is killed leaves the old report as it was.

What is re-timed: every role with `<role>/model.safetensors` and every artifact (ONNX files of fine-tuned targets are
loaded, the others are rebuilt from the saved student exactly as `leankd run` built them), interleaved together as
in a fresh run: CPU forward latency and the task's timings (seq2seq decoding, keyword-spotting streaming). Quality,
size, MACs, memory, CUDA latency and training figures (the layer-distillation step costs too) are left as they were.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import LeanKDError
from .io import write_json_atomic, write_text_atomic
from .measure.devices import cpu_fp32_copy
from .measure.models import prepare_for_measuring, time_on_cpu
from .models import load_weights
from .pipeline import Pipeline
from .recipe import ModelConfig, load_recipe
from .report import build_report, load_report
from .report.markdown import render_markdown
from .report.plots import write_plots
from .report.schema import REPORT_FILENAME, utc_now_stamp
from .stages import build_model

REMEASURED = "CPU timings re-measured"  # prefix of the note a re-measure leaves (an older one is replaced)


def _model_config(pipe: Pipeline, role: str, task) -> ModelConfig:
    r = pipe.recipe
    if role == "teacher":
        return r.teacher.model_copy(update={"checkpoint": None})
    if role.startswith("assistant") and role[len("assistant"):].isdigit():
        i = int(role[len("assistant"):])
        if 1 <= i <= len(r.distill.assistants):
            return r.distill.assistants[i - 1].model_copy(update={"checkpoint": None})
    return pipe.student_config(task).model_copy(update={"checkpoint": None})


def _load_role(pipe: Pipeline, role: str, task) -> nn.Module:
    cfg = _model_config(pipe, role, task)
    model = build_model(cfg, task.num_classes, role, task.model_defaults())
    task.prepare_model(model)
    return load_weights(model, pipe.run_dir / role / "model.safetensors")


def _artifact(pipe: Pipeline, entry: dict, student: nn.Module, task, out_dir: Path) -> nn.Module:
    """The runnable of a report's artifact: its ONNX file for targets that fine-tuned (re-building them would train
    again), otherwise built again from the saved student (deterministic, into a scratch directory)."""
    from .compress.onnx import OnnxModel
    from .compress.targets import TRAINING_TARGETS, build_artifact

    a = entry["artifact"]
    if a["target"] in TRAINING_TARGETS:
        path = pipe.run_dir / a["path"]
        if a["format"] != "onnx" or not path.is_file():
            raise LeanKDError(f"cannot re-time {a['target']}: its file {path} is missing; re-create it with "
                              f"`leankd compress {pipe.run_dir} --to {a['target']}`")
        return OnnxModel(path)
    return build_artifact(a["target"], student, task, out_dir, pipe.recipe.compress.calibration_batches).runnable


def remeasure_latency(run_dir: str | Path, threads: Optional[int] = None, *, log=None) -> dict:
    """Re-time the CPU latency (and the task's joint timings) of every model of the run in `run_dir`, rewrite
    report.json, report.md and the plots, and return the new report. `threads`: torch intra-op threads for the
    timing (default: the recipe's `measure.threads`, else torch's setting)."""
    run_dir = Path(run_dir)
    log = log or (lambda msg: None)
    if threads is not None and threads < 1:
        raise LeanKDError(f"--threads must be at least 1, got {threads}")
    load_report(run_dir)  # a missing or unreadable report is the first thing to say
    from .runlock import run_lock

    with run_lock(run_dir, "remeasure", log=log):  # not while a run or a compress writes this directory
        return _remeasure(run_dir, threads, log)


def _remeasure(run_dir: Path, threads: Optional[int], log) -> dict:
    old = load_report(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise LeanKDError(f"{run_dir} has no recipe.yaml, so its models cannot be rebuilt to re-time them: pass the "
                          "directory `leankd run` made")
    recipe = load_recipe(recipe_path)
    measure = recipe.measure.model_copy(update={"threads": threads}) if threads else recipe.measure
    missing = [f"{role}/model.safetensors" for role, e in old["models"].items()
               if not e.get("artifact") and not (run_dir / role / "model.safetensors").is_file()]
    if missing:
        raise LeanKDError(f"cannot re-time {run_dir}: missing {', '.join(missing)}; re-run `leankd run` on its "
                          "recipe to recreate the weights")
    pipe = Pipeline(recipe, run_dir, quiet=True)
    task = pipe.build_task()
    previous = torch.get_num_threads()
    if measure.threads:
        torch.set_num_threads(measure.threads)
    try:
        log(f"re-timing {', '.join(old['models'])} with {torch.get_num_threads()} thread(s) ...")
        saved = {role: _load_role(pipe, role, task) for role, e in old["models"].items() if not e.get("artifact")}
        cpu_models = {role: cpu_fp32_copy(prepare_for_measuring(m, task)) for role, m in saved.items()}
        with tempfile.TemporaryDirectory(prefix="leankd-remeasure-") as scratch:
            for role, e in old["models"].items():
                if e.get("artifact"):
                    base = e["artifact"]["base_role"]
                    cpu_models[role] = _artifact(pipe, e, saved[base], task, Path(scratch))
            timed = time_on_cpu(cpu_models, task, measure)
        for role, model in saved.items():  # per-model timings a task adds (keyword spotting: streaming chunks)
            timed[role].update(task.extra_measurements(cpu_models[role]))
    finally:
        torch.set_num_threads(previous)
    models = copy.deepcopy(old["models"])
    for role, t in timed.items():
        models[role]["latency"] = {**(models[role].get("latency") or {}), **t.pop("latency")}
        models[role].update(t)
    cpu = next((m["latency"]["cpu"] for m in models.values() if (m.get("latency") or {}).get("cpu")), {})
    load = "/".join(f"{x:g}" for x in cpu.get("load_avg") or []) or "unknown"
    note = (f"{REMEASURED} on {utc_now_stamp()} (`leankd report --remeasure`, {cpu.get('threads')} thread(s), load "
            f"average {load}); quality, size, memory and training figures are from the original run.")
    notes = [n for n in old.get("notes", []) if not n.startswith(REMEASURED)] + [note]
    run = dict(old["run"], environment={**(old["run"].get("environment") or {}), "cpu_threads": cpu.get("threads")})
    report = build_report(run, models, notes, seeds=old.get("seeds"))
    # everything is ready before anything is replaced; then the json and the md, each atomically, then the plots
    markdown = render_markdown(report, run_dir=run_dir)
    write_json_atomic(run_dir / REPORT_FILENAME, report)
    write_text_atomic(run_dir / "report.md", markdown)
    write_plots(report, run_dir)
    return report
