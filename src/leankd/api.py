"""The Python face of leankd. The CLI calls only these functions.

    import leankd
    result = leankd.distill(teacher, student, (x_train, y_train), (x_val, y_val),
                            loss=leankd.losses.KD(temperature=4) + 0.1 * leankd.losses.CE(), precision="bf16")
    print(result.report)

    result = leankd.run("recipe.yaml")          # the whole pipeline of a recipe
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from rich.console import Console
from torch import nn

from .kd.losses import CE, KD, Loss
from .kd.teacher import LiveTeacher
from .errors import DataError, LeanKDError, RecipeError
from .measure.models import measure_models, model_entry, training_entry
from .pipeline import Pipeline
from .report.notes import finish_report
from .stages import check_num_classes, resolve_device
from pydantic import ValidationError

from .recipe import MeasureConfig, Recipe, TrainConfig, format_validation_error, load_recipe, parse_recipe
from .report import render_markdown
from .tasks.base import Task
from .train.checkpoint import save_weights
from .train.loop import fit
from .callbacks import CallbackList
from .callbacks.events import StageEvents
from .io import write_json_atomic


_log = logging.getLogger("leankd")


class Report(dict):
    """report.json as a dict; printing it shows the markdown report."""

    @property
    def markdown(self) -> str:
        return render_markdown(self)

    def __str__(self) -> str:
        return self.markdown


@dataclass
class RunResult:
    report: Report
    run_dir: Path


@dataclass
class DistillResult:
    student: nn.Module
    baseline: Optional[nn.Module]
    report: Report
    run_dir: Optional[Path]


# ---------------------------------------------------------------------------------------------------- run
def run(recipe: Union[str, Path, dict, Recipe], *, run_dir: Optional[Union[str, Path]] = None, force: bool = False,
        resume: bool = False, quiet: bool = False, console: Optional[Console] = None,
        stop_after_epoch: Optional[int] = None, seeds: Optional[list[int]] = None,
        add_targets: Optional[list[str]] = None, require_finished: bool = False,
        callbacks: Optional[list] = None, report_to: Optional[list[str]] = None) -> RunResult:
    """Run a recipe (path, dict or `Recipe`): teacher -> baseline -> KD student -> measure -> report.

    `seeds` replaces the recipe's `seeds:` (students trained once per seed on one split, reported as mean ± sd and
    paired differences). `add_targets` (`leankd compress`/`export`): on a finished run, build only these compression
    targets and add them to its report (timed beside the fp32 student), keeping every earlier model and artifact;
    the run's recipe.yaml is left as it was (the report marks such artifacts `added_after_run`). `require_finished`: a
    stage that would have to be trained is an error (compress/export with --remeasure). `callbacks`: your
    `leankd.callbacks.Callback` objects; `report_to`: loggers besides the recipe's `logging:` ("tensorboard",
    "mlflow", "csv", "wandb")."""
    from .core import dist

    recipe = _as_recipe(recipe)
    if seeds is not None:
        recipe = with_seeds(recipe, seeds)
    run_dir = Path(run_dir) if run_dir else Path(recipe.output_dir) / recipe.name
    dist.init(recipe.device)  # under torchrun: join the other ranks (a no-op in one process)
    pipeline = Pipeline(recipe, run_dir, force=force, resume=resume, quiet=quiet, console=console,
                        stop_after_epoch=stop_after_epoch, add_targets=add_targets, require_finished=require_finished,
                        callbacks=callbacks, report_to=report_to)
    report = pipeline.run()
    return RunResult(Report(report), run_dir) if report is not None else None


def layers(recipe: Union[str, Path, dict, Recipe], *, run_dir: Optional[Union[str, Path]] = None,
           top_k: Optional[int] = None, student_layers: Optional[list[str]] = None,
           teacher_layers: Optional[list[str]] = None):
    """Which teacher layers matter and which student layers match them (linear CKA on a few batches): returns
    (`kd.layers.LayerAnalysis`, notes) and writes `layers.json` into the run directory."""
    recipe = _as_recipe(recipe)
    run_dir = Path(run_dir) if run_dir else Path(recipe.output_dir) / recipe.name
    return Pipeline(recipe, run_dir, quiet=True).layer_analysis(top_k, student_layers, teacher_layers)


def search(recipe: Union[str, Path, dict, Recipe], *, overrides: Optional[list[str]] = None,
           run_dir: Optional[Union[str, Path]] = None, resume: bool = False, force: bool = False,
           storage: Optional[str] = None, workers: int = 1, quiet: bool = False, console: Optional[Console] = None,
           join: bool = False, kill_after_trials: Optional[int] = None) -> Optional[dict]:
    """`leankd search`: returns the search summary (search.json's content plus `dir`), or None for a joining
    worker (the worker that started the search writes the report). `workers` > 1 starts that many processes on
    this machine, sharing the study and the CPU threads."""
    import os
    import subprocess
    import sys

    from .search.runner import Search

    source = recipe
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise RecipeError("overrides apply to a recipe file; edit the dict or Recipe directly")
    recipe = _as_recipe(recipe)
    run_dir = Path(run_dir) if run_dir else Path(recipe.output_dir) / f"{recipe.name}-search"
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers > 1:
        torch.set_num_threads(threads)
    s = Search(recipe, run_dir, resume=resume or join, force=force and not join, storage=storage, quiet=quiet,
               console=console, kill_after_trials=kill_after_trials)
    s.prepare()
    children = []
    if workers > 1:
        if not isinstance(source, (str, Path)):
            raise RecipeError("--workers > 1 needs the recipe as a file (each worker process reads it)")
        cmd = [sys.executable, "-m", "leankd.cli", "search", str(source), "--run-dir", str(run_dir), "--join",
               "--quiet", *[a for o in overrides or [] for a in ("--set", o)]]
        if storage:
            cmd += ["--storage", storage]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        children = [subprocess.Popen(cmd, env=env) for _ in range(workers - 1)]
    try:
        s.work()
    finally:
        codes = [child.wait() for child in children]
    if any(codes):
        raise LeanKDError(f"{sum(1 for c in codes if c)} of the {len(children)} other worker processes failed "
                          f"(exit codes {codes}); their errors are above. Finished trials are kept: --resume")
    if join:
        return None
    summary = s.write_report()
    return {**summary, "dir": str(run_dir)}


def with_seeds(recipe: Recipe, seeds: list[int]) -> Recipe:
    """The recipe with `seeds` set, validated again (the main seed: `seed` when listed, else the first of `seeds`
    unless `seed` was given)."""
    raw = recipe.model_dump(mode="json")
    if "seed" not in recipe.model_fields_set:
        raw.pop("seed")
    raw["seeds"] = list(seeds)
    return parse_recipe(raw, origin="recipe with --seeds")


def remeasure(run_dir: Union[str, Path], *, threads: Optional[int] = None, quiet: bool = False,
              console: Optional[Console] = None) -> Report:
    """Re-time the CPU latency of a finished run's models from the weights on disk and rewrite its report
    (`leankd report RUN --remeasure`); the old report stays until the new one is complete. See `leankd.remeasure`."""
    from .remeasure import remeasure_latency

    log = None if quiet else (console or Console()).print
    return Report(remeasure_latency(run_dir, threads, log=log))


def _as_recipe(recipe: Union[str, Path, dict, Recipe]) -> Recipe:
    if isinstance(recipe, (str, Path)):
        return load_recipe(recipe)
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"expected a recipe path, dict or Recipe, got {type(recipe).__name__}")
    return recipe


_NO_CACHE = ("teacher_cache_views needs the training data in memory (tensors, a TensorTask, or a Dataset read into "
             "memory: distill(materialize=True)): augmentation views are replayed from it")


def _cached_teacher(live: LiveTeacher, task: Task, views: int, seed: int, run_dir: Optional[Path], quiet: bool,
                    console: Optional[Console]):
    """A CachedTeacher for distill(): keyed by the teacher's weights, the training data and the views."""
    import hashlib
    import tempfile

    from .kd.cache import build_or_load

    train = task.train_tensors() if task.supports_views else None  # the cache's key: no recipe to fingerprint
    if train is None:
        raise DataError(_NO_CACHE)
    h = hashlib.sha256(f"views={views} seed={seed} precision={live.dtype}".encode())
    for tensor in list(live.model.state_dict().values()) + train:
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    directory = run_dir / "teacher_cache" if run_dir else Path(tempfile.mkdtemp(prefix="leankd-teacher-cache-"))
    log = (lambda m: None) if quiet else (lambda m: (console or Console()).print(m, markup=False, highlight=False))
    cached, info = build_or_load(directory, h.hexdigest()[:16], live, task, views, seed, log=log)
    live.model.to("cpu")  # the student trains alone on the device
    return cached, info.as_dict()


# ---------------------------------------------------------------------------------------------------- distill
DataLike = Union[Task, tuple, torch.utils.data.Dataset, torch.utils.data.DataLoader]


def _as_task(train_data: DataLike, val_data: Optional[DataLike], test_data: Optional[DataLike],
             num_classes: Optional[int], device: torch.device, steps_per_epoch: Optional[int] = None,
             materialize: Optional[bool] = None, batch_size: int = 128) -> Task:
    from .tasks.userdata import build_task

    if isinstance(train_data, Task):
        return train_data
    data = {name: d for name, d in (("train", train_data), ("val", val_data), ("test", test_data)) if d is not None}
    return build_task(data, num_classes, device, steps_per_epoch, materialize, batch_size)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_data: DataLike,
    val_data: Optional[DataLike] = None,
    *,
    test_data: Optional[DataLike] = None,
    loss: Optional[Loss] = None,
    precision: str = "fp32",
    teacher_precision: str = "fp32",
    epochs: int = 10,
    batch_size: Optional[int] = None,
    optimizer: str = "sgd",
    lr: Optional[float] = None,
    schedule: str = "cosine",
    weight_decay: float = 5e-4,
    train: Optional[Union[dict, TrainConfig]] = None,
    baseline: bool = True,
    num_classes: Optional[int] = None,
    device: str = "auto",
    seed: int = 0,
    run_dir: Optional[Union[str, Path]] = None,
    measure: Optional[dict] = None,
    quiet: bool = False,
    console: Optional[Console] = None,
    teacher_cache_views: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    materialize: Optional[bool] = None,
    callbacks: Optional[list] = None,
    report_to: Optional[list[str]] = None,
    resume: bool = False,
    stop_after_epoch: Optional[int] = None,
) -> DistillResult:
    """Distill a (trained) `teacher` into `student` and report quality and cost side by side.

    The baseline is a copy of the student's *initial* weights trained alone with the same budget, so the KD
    gain is measured, not assumed. The report is measured on `test_data`, else `val_data`.

    Data (each split; see `leankd.tasks.userdata`):
    - `(inputs, targets)` tensors or a `TensorDataset`: held on the device (`TensorTask`), the fastest path.
    - a map-style `Dataset` whose examples are `(input, target)` tuples or dicts with one input key of
      `tasks.items.INPUT_KEYS` ("input", "inputs", "x", "image") and one target key of `TARGET_KEYS` ("target",
      "label", "labels", "y"); inputs must be tensors (add e.g. `ToTensor()` to a torchvision dataset). Up to
      256 MiB of inputs (all splits) it is read into tensors once and trains like tensors; larger, or when its
      `__getitem__` augments at random, it streams through a DataLoader in a seeded order (`LoaderTask`).
      `materialize=True/False` forces either.
    - a `DataLoader`: its dataset, `collate_fn` and `num_workers` are used; its sampler/shuffle are not (leankd
      draws its own seeded order) and its `batch_size` is only the default of `batch_size` here.
    - an `IterableDataset` (a stream: `IterableTask`): batches in the stream's own order; an epoch is one pass, or
      `steps_per_epoch` batches (required for an endless stream). No teacher cache (it needs a stable sample index):
      `teacher_cache_views` falls back to the live teacher, with a note in the report. `materialize=True` reads a
      finite stream into memory instead (then as tensors).
    `num_classes` is inferred from tensors and materialized data; streamed data need it given.
    `batch_size` defaults to a DataLoader's batch size, else 128.

    The default loss is 0.9·KD(T=4) + 0.1·CE. `train` takes any other training setting of the recipe's `train:`
    section (warmup_epochs, milestones, label_smoothing, grad_clip, channels_last, compile, ...) as a dict or a
    `TrainConfig`, overriding the keyword arguments.
    `teacher_cache_views=K`: offline KD — the teacher labels K fixed augmentation views once (fp16 logits in
    `<run_dir>/teacher_cache`, or a temporary folder) and the student replays one view per epoch.

    Progress: an overall bar with ETA and the per-epoch bar (plain lines when not a terminal); `quiet=True` silences
    it. `callbacks`: your `leankd.callbacks.Callback` objects; `report_to`: loggers ("tensorboard", "mlflow", "csv",
    "wandb"), writing under `run_dir`. With `run_dir`, each stage keeps a checkpoint of its last finished epoch
    (`<run_dir>/<role>/checkpoint.safetensors`) and `resume=True` continues an interrupted call: finished stages
    with the same settings are loaded, an interrupted one continues from its checkpoint (as `leankd run --resume`).
    `stop_after_epoch` stops a stage after that epoch as if killed (tests, debugging)."""
    from .tasks.userdata import batch_size_hint

    from .core import dist

    if dist.launched_world_size() > 1:
        raise RecipeError("leankd.distill() trains in one process; under torchrun every process would train and write "
                          "the same run. For data-parallel training run a recipe: leankd.run(recipe) or "
                          "`leankd run recipe.yaml --nproc N`")
    if resume and run_dir is None:
        raise RecipeError("distill(resume=True) continues the run kept in a run directory: pass run_dir= (the one "
                          "the interrupted call used)")
    dev = resolve_device(device)
    batch_size = batch_size or batch_size_hint(train_data) or 128
    task = _as_task(train_data, val_data, test_data, num_classes, dev, steps_per_epoch, materialize, batch_size)
    if teacher_cache_views is not None and getattr(task, "streams", False):
        teacher_cache_views = None
        note = ("teacher_cache_views was not applied: the training data is a stream (IterableDataset), and the "
                "teacher cache needs a stable sample index; the student distilled from the live teacher")
        task.notes = [*task.notes, note]
        _log.warning(note)
    if teacher_cache_views is not None and not (task.supports_views and task.train_tensors() is not None):
        raise DataError(_NO_CACHE)  # now, not after the baseline has trained
    check_num_classes(teacher, task.num_classes, "teacher")
    check_num_classes(student, task.num_classes, "student")
    for model in (teacher, student):
        task.prepare_model(model)  # e.g. a text task tokenizes the way each model reads
    loss = loss if loss is not None else 0.9 * KD(4.0) + 0.1 * CE()
    settings = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                    lr=lr if lr is not None else (0.1 if optimizer == "sgd" else 1e-3),
                    schedule=schedule, weight_decay=weight_decay, precision=precision)
    settings.update(train.model_dump() if isinstance(train, TrainConfig) else dict(train or {}))
    try:
        cfg = TrainConfig(**settings)
        measure_cfg = MeasureConfig(**(measure or {}))
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, "distill() settings")) from None
    console = console or Console()
    run_dir = Path(run_dir) if run_dir else None
    fps = {role: _distill_fp(role, cfg, CE() if role == "baseline" else loss, seed, student)
           for role in (["baseline"] if baseline else []) + ["student"]}
    if run_dir is not None and not resume:
        _refuse_interrupted(run_dir, fps)  # before any training
    events = _distill_events(run_dir, quiet, console, callbacks, report_to)
    try:
        events.on_run_start(run_dir, {role: cfg.epochs for role in fps})
        torch.manual_seed(seed)
        initial = copy.deepcopy(student).cpu()
        trained: dict[str, nn.Module] = {}

        def train(role: str, model: nn.Module, stage_loss: Loss, live_teacher=None) -> dict:
            sdir = run_dir / role if run_dir else None
            reused = _reused_stage(sdir, fps[role], model) if resume and sdir else None
            if reused is not None:
                events.on_stage_start(role, {"reused": True, "epochs": cfg.epochs})
                events.on_stage_end(role, {"reused": True, "origin": "trained here", "training": reused})
                trained[role] = model
                return reused
            ckpt = sdir / "checkpoint.safetensors" if sdir else None
            state = _checkpoint_state(ckpt, fps[role]) if resume and ckpt is not None else {}
            events.on_stage_start(role, {"reused": False, "epochs": cfg.epochs, "start_epoch": state.get("epoch", 0),
                                         "history": state.get("history", []),
                                         "params": {"model": type(model).__name__, "loss": stage_loss.describe(),
                                                    **{f"train.{k}": str(v) for k, v in
                                                       cfg.model_dump(mode="json").items()}}})
            result = fit(model, task, cfg, loss=stage_loss, teacher=live_teacher, seed=seed,
                         metrics_path=sdir / "metrics.jsonl" if sdir else None, checkpoint_path=ckpt,
                         resume=resume, progress=StageEvents(role, events), stop_after_epoch=stop_after_epoch,
                         fingerprint=fps[role])
            entry = training_entry(result, stage_loss, cfg, dev)
            if sdir:
                save_weights(sdir / "model.safetensors", model)
                write_json_atomic(sdir / "stage.json", {"fingerprint": fps[role], "stage": role,
                                                        "origin": "trained here", "training": entry})
                ckpt.unlink(missing_ok=True)  # finished: its weights are in model.safetensors
                events.on_artifact(sdir / "model.safetensors", "weights")
            events.on_stage_end(role, {"reused": False, "origin": "trained here", "training": entry})
            trained[role] = model
            return entry

        baseline_training = train("baseline", copy.deepcopy(initial), CE()) if baseline else None
        kd_teacher = LiveTeacher(copy.deepcopy(teacher), task, teacher_precision)
        cache_info = None
        if teacher_cache_views is not None:
            kd_teacher, cache_info = _cached_teacher(kd_teacher, task, teacher_cache_views, seed, run_dir, quiet,
                                                     console)
        student_training = train("student", student, loss, kd_teacher)
        if cache_info is not None:
            student_training["teacher_cache"] = cache_info
        result = _distill_report(teacher, trained, baseline, student_training, baseline_training, task, measure_cfg,
                                 run_dir, seed, dev)
        events.on_run_end(result.report)
        return result
    finally:
        events.close()


def _distill_report(teacher, trained, baseline, student_training, baseline_training, task, measure_cfg, run_dir, seed,
                    dev) -> DistillResult:
    models: dict[str, dict] = {}
    roles = {"teacher": (teacher, None), "student": (trained["student"], student_training)}
    if baseline:
        roles = {"teacher": roles["teacher"], "baseline": (trained["baseline"], baseline_training),
                 "student": roles["student"]}
    measured = measure_models({role: copy.deepcopy(m) for role, (m, _) in roles.items()}, task, measure_cfg)
    for role, (model, training) in roles.items():
        history = f"{role}/metrics.jsonl" if run_dir and training else None
        models[role] = model_entry(role, type(model).__name__, "given" if training is None else "trained here",
                                   measured[role], training, history)
    report = Report(finish_report("distill", run_dir, seed, task, models, dev))
    return DistillResult(student=trained["student"], baseline=trained.get("baseline"), report=report, run_dir=run_dir)


def _distill_fp(role: str, cfg: TrainConfig, loss: Loss, seed: int, student: nn.Module) -> str:
    """What a distill() stage's weights depend on that leankd can see (the user's objects are not fingerprinted:
    resuming with other data or models is the caller's responsibility, as with any checkpoint)."""
    from .core.fingerprint import fingerprint

    return fingerprint({"distill": role, "train": cfg.model_dump(mode="json"), "loss": loss.describe(), "seed": seed,
                        "student": type(student).__name__,
                        "parameters": sum(p.numel() for p in student.parameters())})


def _refuse_interrupted(run_dir: Path, fps: dict) -> None:
    for role in fps:
        ckpt = run_dir / role / "checkpoint.safetensors"
        if ckpt.exists():
            raise LeanKDError(f"distill(): {ckpt} holds the {role} stage of an interrupted call: pass resume=True to "
                              "continue it, or another run_dir to start over (the checkpoint is kept)")


def _reused_stage(sdir: Path, fp: str, model: nn.Module) -> Optional[dict]:
    """resume=True: a finished stage with the same settings is loaded, not trained again; returns its training."""
    import json

    from .models import load_weights

    stage_json, weights = sdir / "stage.json", sdir / "model.safetensors"
    if not (stage_json.exists() and weights.exists()):
        return None
    info = json.loads(stage_json.read_text())
    if info.get("fingerprint") != fp:
        return None
    load_weights(model, weights)
    return info.get("training")


def _checkpoint_state(ckpt: Path, fp: str) -> dict:
    """The interrupted stage's state, or {} (none); a checkpoint of other settings is removed: the stage starts over."""
    from .train.checkpoint import read_state

    if not ckpt.exists():
        return {}
    state = read_state(ckpt)
    if state.get("fingerprint") != fp:
        _log.warning("%s was made with other settings: starting that stage over", ckpt)
        ckpt.unlink()
        return {}
    return state


def _distill_events(run_dir: Optional[Path], quiet: bool, console: Console, callbacks, report_to) -> CallbackList:
    from .callbacks.plan import run_events

    return run_events(list(report_to or []), run_dir, run_dir.name if run_dir else "distill", console, quiet, callbacks)
