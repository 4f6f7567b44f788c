"""The stage runner: one training stage of a run directory, trained or reused.

Each stage lives in `<run_dir>/<stage>/` and is keyed by a fingerprint of everything that shapes its result (model,
training settings, data, seed, loss, and the upstream teacher). A finished stage whose fingerprint matches is reused
(a teacher is trained once); `force` redoes it; an interrupted stage refuses to silently start over and asks for
`resume` (continue) or `force` (restart). The fingerprints are byte-identical to those pipeline.py computed before
this module was split out of it: existing run directories keep their stages.

`StageRunner` is the part of `Pipeline` (pipeline.py) that runs stages; a task kind's own student stages
(`TaskKind.student_stages`, e.g. seq2seq/stages.py) get a `StudentStages` holding one, so they need nothing from
pipeline.py. The run directory's lock is taken by `Pipeline.run` (runlock.py) around every stage.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from rich.console import Console
from torch import nn

from .core import dist
from .core.fingerprint import fingerprint
from .data.readers import file_identity
from .errors import LeanKDError, ModelError
from .io import write_json_atomic
from .kd.losses import Loss
from .kd.teacher import LiveTeacher
from .measure.models import training_entry
from .models import create_model, infer_num_classes, load_weights
from .models.registry import model_accepts
from .recipe import ModelConfig, Recipe, TrainConfig
from .tasks.base import Task
from .train.checkpoint import read_state, save_weights
from .train.loop import fit
from .callbacks import CallbackList
from .callbacks.events import StageEvents


# ---------------------------------------------------------------------------------------------- fingerprint parts
def resolve_device(name: str) -> torch.device:
    """The recipe's device; under torchrun a CUDA device is this process's own GPU (its local rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LeanKDError(f"device {name!r} was requested but CUDA is not available here: use device: auto or cpu")
    if device.type == "cuda" and dist.is_distributed():
        return torch.device("cuda", dist.local_rank())
    return device


# settings added after runs already existed: left out of a fingerprint while at their default, so an upgrade does
# not retrain (or refuse to resume) every existing run directory
ADDED_TRAIN_DEFAULTS = {"cuda_graphs": False, "lr_scaling": "none", "lr_base_batch_size": 128, "sync_bn": False,
                        "accumulate": 1}


# settings that change how a stage is spread over processes, never what it computes: left out of the fingerprint at
# every value, like the number of processes (a run trained under torchrun is reused by one process and the other way
# round; a checkpoint records its world size and `--resume` checks that instead). train.fsdp shards what DDP
# replicates: the same global batch, the same gradient averaged over the same ranks (equal to DDP's and one
# process's within float rounding; tests/test_fsdp.py), and the checkpoints hold the same full state dicts.
HOW_NOT_WHAT = {"fsdp"}


def _stable(settings: dict, added_defaults: dict) -> dict:
    return {k: v for k, v in settings.items() if not (k in added_defaults and v == added_defaults[k])}


ADDED_DATA_DEFAULTS = {"text": None, "stream": None}
ADDED_TEXT_DEFAULTS = {"word_min_freq": 1, "word_max_size": None, "encoding": "utf-8"}
ADDED_SEQ_DEFAULTS = {"header": True, "encoding": "utf-8"}
ADDED_AUDIO_DEFAULTS = {"speaker_pattern": None}
WORD_SETTINGS = {"word_min_freq": True, "word_max_size": True}  # read by word-level students only


def _data_settings(data: dict, seed: int) -> dict:
    """The data settings a stage depends on, without settings added later at their defaults (old runs stay valid);
    a split_seed equal to the run's seed is the default split, so it is left out too."""
    data = _stable(data, ADDED_DATA_DEFAULTS)
    if data.get("split_seed") in (None, seed):
        data.pop("split_seed", None)
    if data.get("text") is not None:
        data["text"] = _stable(data["text"], ADDED_TEXT_DEFAULTS)
    if data.get("audio") is not None:
        data["audio"] = _stable(data["audio"], ADDED_AUDIO_DEFAULTS)
    if data.get("seq") is not None:
        data["seq"] = _stable(data["seq"], ADDED_SEQ_DEFAULTS)
    return data


def data_fingerprints(recipe: Recipe, task: Task) -> tuple[dict, dict]:
    """(students' data fingerprint, teacher's data fingerprint) of a recipe's run on `task`."""
    # what the trained weights depend on: not where data is cached, nor what is only measured (test subset, FA target,
    # the text metric the report judges by)
    ignored = {"cache_dir": True, "num_workers": True, "limit_test": True, "audio": {"far_target"},
               "seq": {"beam", "length_penalty", "max_decode_len"}, "text": {"metric": True}}  # seq: how it decodes
    seed = recipe.seed
    data_fp = {"data": _data_settings(recipe.data.model_dump(exclude=ignored), seed),
               "dataset": task.info.get("fingerprint")}
    # the teacher (and its cache) never read the word vocabulary: its settings must not retrain the teacher
    teacher_ignored = {**ignored, "text": {**ignored["text"], **WORD_SETTINGS}}
    teacher_data_fp = {"data": _data_settings(recipe.data.model_dump(exclude=teacher_ignored), seed),
                       "dataset": data_fp["dataset"]}
    return data_fp, teacher_data_fp


def build_model(cfg: ModelConfig, num_classes: int, role: str, defaults: Optional[dict] = None) -> nn.Module:
    kwargs = {k: v for k, v in (defaults or {}).items() if k not in cfg.kwargs and model_accepts(cfg.model, k)}
    model = create_model(cfg.model, num_classes=num_classes, **{**kwargs, **cfg.kwargs})
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    check_num_classes(model, num_classes, f"{role} ({cfg.model})")
    return model


def copy_teacher_layers(student: nn.Module, teacher: nn.Module, layers) -> list[int]:
    """Copy the teacher's embeddings, head and `layers` ("every_other" or indices) into `student`; returns the
    teacher layers kept. The model family does it (`init_from_teacher(teacher, layers)` on the student model), so
    this runner names no family; one that cannot is a clear error."""
    init = getattr(student, "init_from_teacher", None)
    if not callable(init):
        raise ModelError(f"student.init_from_teacher: a {type(student).__name__} cannot start from a teacher's layers "
                         "(leankd's causal LMs can: gpt, lm_small, lm_tiny, hf:); remove the setting")
    return init(teacher, layers)


def check_num_classes(model: nn.Module, num_classes: int, who: str) -> None:
    found = infer_num_classes(model)
    if found is not None and found != num_classes:
        raise ModelError(
            f"{who} predicts {found} classes but the data has {num_classes}: build it with num_classes={num_classes} "
            "(leankd passes num_classes to registry, torchvision, timm and python: models that accept it)"
        )


@dataclass
class StageResult:
    model: nn.Module
    origin: str
    training: Optional[dict]  # None when the weights were loaded, not trained here
    reused: bool
    training_extra: dict = field(default_factory=dict)  # joins the report's training block (feature costs, cache)



class StageRunner:
    """Trains or reuses the stages of one run directory. `Pipeline` is one; these attributes are set by its
    constructor."""

    recipe: Recipe
    run_dir: Path
    force: bool
    resume: bool
    quiet: bool
    console: Console
    stop_after_epoch: Optional[int]
    require_finished: bool  # compress/export: a stage that would train is an error (`_check_finished`)
    epoch_hook: Optional[Callable[[str, dict], None]]  # (stage, epoch row): a search's pruner
    stage_dirs: dict[str, Path]  # stages living outside run_dir (a seed's shared teacher)
    role_labels: dict[str, str]  # report labels of assistants and of a task kind's own students
    events: CallbackList  # progress display, loggers, the user's callbacks (callbacks/)
    stage_prefix: str = ""  # "seed1/": a seed's stages in the run's events (their directory under the run)

    def log(self, msg: str) -> None:
        """Print a log line: brackets in it are text (a path, `leankd[text]`), only leankd's own style tags style."""
        from .markup import safe

        if not dist.is_main():  # rank 0 speaks for the run
            return
        self.console.print(safe(msg), highlight=False, soft_wrap=True)

    def live_teacher(self, model: nn.Module, task: Task, channels_last: bool) -> LiveTeacher:
        """A frozen copy of the teacher that distils: on the CPU with `teacher.device: cpu` (memory-aware mode)."""
        device = torch.device("cpu") if self.recipe.teacher.device == "cpu" else task.device
        return LiveTeacher(copy.deepcopy(model), task, self.recipe.teacher.precision, channels_last=channels_last,
                           device=device)

    def cached_teacher(self, task: Task, live: LiveTeacher, data_fp: dict, subdir: Optional[str] = None):
        """Offline KD: the teacher's logits on `teacher.cache_views` augmentation views, from the cache file (built
        now if missing or stale). The live teacher is moved off the device afterwards: the student trains alone."""
        from .kd.cache import build_or_load

        r = self.recipe
        views = min(r.teacher.cache_views, task.max_views or r.teacher.cache_views)
        if views < r.teacher.cache_views:
            self.log(f"teacher cache: this task has no per-epoch augmentation views, so {views} view holds everything "
                     f"(teacher.cache_views = {r.teacher.cache_views} would repeat it)")
        fp = fingerprint({"cache": "teacher-logits", **data_fp, "teacher": self.stage_fp("teacher"),
                          "teacher_precision": r.teacher.precision, "views": views, "seed": r.seed,
                          "top_k": r.teacher.cache_top_k})
        directory = Path(r.teacher.cache_dir) if r.teacher.cache_dir else self.run_dir / "teacher_cache"
        if subdir:  # one cache per kind of student data (seq2seq: each word-KD method), each kept up to date
            directory = directory / subdir
        cached, info = build_or_load(directory, fp, live, task, views, r.seed, log=self.log,
                                     describe={"teacher": self.stage_fp("teacher"), "seed": r.seed},
                                     prune=r.teacher.cache_dir is None, top_k=r.teacher.cache_top_k)
        live.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        cached.cache_info = {**info.as_dict(), "augmented": task.max_views != 1}  # the stage's training block
        return cached

    def stage_fp(self, stage: str) -> Optional[str]:
        """A finished stage's fingerprint (None if it has none yet): what a stage or cache built from it keys on."""
        path = self.stage_dirs.get(stage, self.run_dir / stage) / "stage.json"
        return json.loads(path.read_text())["fingerprint"] if path.exists() else None

    def stage(self, name: str, model: nn.Module, task: Task, cfg: TrainConfig, loss: Loss, *, model_cfg: ModelConfig,
              extra_fp: dict, teacher=None, make_teacher=None) -> StageResult:
        """Train (or reuse) one stage. `make_teacher`, when given, builds the teacher only if the stage trains (a
        teacher cache is not built for a stage that is reused)."""
        sdir = self.run_dir / name
        # what shapes this stage's weights: not teacher.precision (it only matters while distilling, and is in the
        # student's fingerprint), and a checkpoint file by its size and mtime, not just its path
        model_fp = model_cfg.model_dump(exclude={"train", "precision", "device", "cache", "cache_views", "cache_dir",
                                                  "cache_top_k"})
        for added_later in ("limit_train", "init_from_teacher"):  # unset, they leave older stages valid
            if model_fp.get(added_later, 0) is None:
                del model_fp[added_later]
        if model_cfg.checkpoint:
            model_fp["checkpoint_file"] = file_identity(Path(model_cfg.checkpoint))
        if model_cfg.checkpoint and name == "teacher":  # loaded, not trained: training settings and seed do not
            fp = fingerprint({"stage": name, "model": model_fp, **extra_fp})  # change it (nor its cache)
        else:
            fp = fingerprint({"stage": name, "model": model_fp, "loss": loss.describe(), "seed": self.recipe.seed,
                              "train": _stable(cfg.model_dump(exclude=HOW_NOT_WHAT), ADDED_TRAIN_DEFAULTS),
                              **extra_fp})
        stage_json, weights, ckpt = sdir / "stage.json", sdir / "model.safetensors", sdir / "checkpoint.safetensors"
        # rank 0 decides (and tidies the stage directory); under torchrun every rank then follows the same decision
        decision, info = dist.on_main(lambda: self._prepare_stage(name, sdir, fp, model_cfg, cfg, loss))
        events: CallbackList = getattr(self, "events", None) or CallbackList()
        key = self.stage_prefix + name  # the stage's name in events, logs and the overall progress
        if decision == "reuse":
            load_weights(model, weights)
            events.on_stage_start(key, {"reused": True, "epochs": cfg.epochs})
            events.on_stage_end(key, {"reused": True, "origin": info["origin"], "training": info.get("training")})
            return StageResult(model, info["origin"], info.get("training"), reused=True)
        if decision == "checkpoint":
            origin, training = f"checkpoint: {model_cfg.checkpoint}", None
            events.on_stage_start(key, {"reused": True, "epochs": 0})
        else:
            if make_teacher is not None:
                teacher = make_teacher()
            hook = self.epoch_hook
            state = read_state(ckpt) if self.resume and ckpt.exists() and dist.is_main() else {}
            events.on_stage_start(key, {"reused": False, "epochs": cfg.epochs, "start_epoch": state.get("epoch", 0),
                                        "history": state.get("history", []),
                                        "params": stage_params(model_cfg, cfg, loss, fp)})
            progress = StageEvents(key, events, on_epoch=(lambda row: hook(name, row)) if hook else None)
            result = fit(model, task, cfg, loss=loss, teacher=teacher, seed=self.recipe.seed, checkpoint_path=ckpt,
                         metrics_path=sdir / "metrics.jsonl", resume=self.resume, progress=progress,
                         stop_after_epoch=self.stop_after_epoch, fingerprint=fp)
            origin = "trained here"
            training = training_entry(result, loss, cfg, task.device, task.samples_per_example)
            if getattr(teacher, "cache_info", None):
                training["teacher_cache"] = teacher.cache_info
        if dist.is_main():
            save_weights(weights, model)
            write_json_atomic(stage_json, {"fingerprint": fp, "stage": name, "architecture": model_cfg.model,
                                           "origin": origin, "training": training})
            if ckpt.exists():
                ckpt.unlink()  # the stage is complete: its final weights are in model.safetensors
            events.on_artifact(weights, "weights")
        events.on_stage_end(key, {"reused": decision == "checkpoint", "origin": origin, "training": training})
        dist.barrier()  # the next stage's fingerprint reads this one's record, on every rank
        return StageResult(model, origin, training, reused=False)

    def _prepare_stage(self, name: str, sdir: Path, fp: str, model_cfg: ModelConfig, cfg: TrainConfig, loss: Loss
                       ) -> tuple[str, Optional[dict]]:
        """What `stage` does with this stage, from its directory: ("reuse", its record), ("checkpoint", None) for a
        teacher loaded from the recipe's checkpoint, or ("train", None) with the directory ready (a stale or forced
        stage removed, an interrupted one checked for --resume)."""
        stage_json, weights, ckpt = sdir / "stage.json", sdir / "model.safetensors", sdir / "checkpoint.safetensors"
        if self.require_finished and not (model_cfg.checkpoint and name == "teacher"):
            self._check_finished(name, stage_json, weights, fp)
        if self.force and sdir.exists():
            shutil.rmtree(sdir)
        if stage_json.exists():
            info = json.loads(stage_json.read_text())
            if info["fingerprint"] == fp and weights.exists():
                self.log(f"{name}: reusing {weights} (same fingerprint {fp}; --force retrains)")
                return "reuse", info
            self.log(f"{name}: the recipe changed since {stage_json} was written: redoing this stage")
            shutil.rmtree(sdir)
        if model_cfg.checkpoint and name == "teacher":
            self.log(f"{name}: loaded {model_cfg.model} weights from {model_cfg.checkpoint} (not trained here)")
            return "checkpoint", None
        if ckpt.exists() and not self.resume:
            epoch = _checkpoint_epoch(ckpt)
            raise LeanKDError(
                f"stage '{name}' in {self.run_dir} was interrupted after epoch {epoch}/{cfg.epochs}: rerun with "
                "--resume to continue it, or --force to start the run over"
            )
        if ckpt.exists() and _checkpoint_fp(ckpt) != fp:
            self.log(f"{name}: the interrupted checkpoint {ckpt} was made with other settings: starting this "
                     "stage over")
            ckpt.unlink()
        sdir.mkdir(parents=True, exist_ok=True)
        for leftover in sdir.glob(".*.tmp"):  # temp files of a write that a kill interrupted
            leftover.unlink()
        verb = "resuming" if ckpt.exists() else "training"
        spread = f", on {dist.world_size()} processes" if dist.world_size() > 1 else ""
        self.log(f"{name}: {verb} {model_cfg.model} for {cfg.epochs} epochs, loss {loss.describe()}, "
                 f"{cfg.precision}, batch {cfg.batch_size}{spread}")
        return "train", None

    def _check_finished(self, name: str, stage_json: Path, weights: Path, fp: str) -> None:
        """`leankd compress`/`export` add artifacts to a finished run: a stage they would have to train (missing,
        unfinished, or made with other settings) is an error before any training, not a silent retrain."""
        if stage_json.exists() and weights.exists() and json.loads(stage_json.read_text())["fingerprint"] == fp:
            return
        why = ("was made with other settings" if stage_json.exists() and weights.exists() else "is not finished")
        raise LeanKDError(f"stage '{name}' of {self.run_dir} {why}, so there is no trained {name} to compress: "
                          f"run `leankd run {self.run_dir / 'recipe.yaml'} --run-dir {self.run_dir}` first "
                          "(add --resume if it was interrupted)")


@dataclass
class StudentStages:
    """What a task kind's own student stages (`TaskKind.student_stages`) get from the run: the runner that trains
    and reuses stages (fingerprints, `--resume`, the teacher cache), the run's task, its teacher stage, the students'
    initial weights and model settings, the data fingerprints every student / the teacher's caches key on, and
    `stages` (teacher and baseline so far), which the kind adds its stages to. One object rather than a list of
    arguments, so a kind's hook keeps working when the run hands over more."""

    runner: StageRunner
    task: Task
    teacher: StageResult
    student_init: nn.Module
    model_cfg: ModelConfig
    data_fp: dict
    teacher_data_fp: dict
    stages: dict[str, StageResult]


def stage_params(model_cfg: ModelConfig, cfg: TrainConfig, loss: Loss, fp: str) -> dict:
    """A stage's settings as flat strings, for a tracker's params (MLflow, W&B): model, loss, fingerprint, train.*"""
    params = {"model": model_cfg.model, "loss": loss.describe(), "fingerprint": fp}
    params.update({f"train.{k}": str(v) for k, v in cfg.model_dump(mode="json").items()})
    return params


def _checkpoint_epoch(path: Path):
    return read_state(path).get("epoch", "?")


def _checkpoint_fp(path: Path):
    return read_state(path).get("fingerprint")
