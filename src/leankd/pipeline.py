"""The run pipeline: teacher -> baseline student -> distilled student -> measure -> report.

`Pipeline` decides which stages a recipe needs (teacher, baseline, KD students, assistants, other seeds) and
composes the report; the pieces it uses live by job:

- stages.py: the stage runner (`StageRunner`, which `Pipeline` is): stage fingerprints from each stage's declared
  inputs, reuse, resume, and the checks of `leankd compress`/`export` that nothing would retrain;
- measure/models.py: how every model and artifact of a report is measured (`measure_models`) and its report block;
- measure/run.py (`MeasurePhase`): the run's measuring phase, the report composed and committed with its artifacts;
- compress/run.py (`CompressPhase`): the recipe's compression targets built from the saved student;
- report/notes.py, report/metric.py: the notes under the report's tables, `finish_report`, the primary metric.

`Pipeline.run` holds the run directory's lock (runlock.py) for the whole run.
"""
from __future__ import annotations

import contextlib
import copy
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from rich.console import Console
from torch import nn

from .compress.run import CompressPhase
from .core import dist
from .core.fingerprint import fingerprint  # noqa: F401  (an old import path: leankd.pipeline.fingerprint)
from .callbacks import CallbackList
from .callbacks.plan import stage_plan
from .core.taskkind import TASK_KINDS
from .kd.build import build_loss, feature_terms, guide_temperature, supervised_loss
from .errors import RecipeError
from .io import WRITE_ERRNOS, write_error, write_json_atomic, write_text_atomic
from .measure.models import prepare_for_measuring
from .measure.run import MeasurePhase
from .models import create_model, load_weights
from .recipe import ModelConfig, Recipe, dump_recipe
from .report.metric import apply_named_metric, task_primary
from .report.notes import LOGIT_KD_ROLE
from .report.schema import primary_value
from .stages import (StageResult, StageRunner, StudentStages, build_model, copy_teacher_layers, data_fingerprints,
                     resolve_device)
from .tasks.base import Task
from .train.step_cost import feature_costs


class Pipeline(StageRunner, MeasurePhase, CompressPhase):
    """Runs one recipe in one run directory."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, force: bool = False, resume: bool = False,
                 quiet: bool = False, console: Optional[Console] = None, stop_after_epoch: Optional[int] = None,
                 add_targets: Optional[list[str]] = None, require_finished: bool = False,
                 callbacks: Optional[list] = None, report_to: Optional[list[str]] = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force, self.resume, self.quiet, self.stop_after_epoch = force, resume, quiet, stop_after_epoch
        self.console = console or Console(quiet=False)
        self.device = resolve_device(recipe.device)
        self.failed_targets: dict[str, str] = {}
        self.feature_pairs: Optional[list] = None
        self.teacher_examples: Optional[int] = None  # teacher.limit_train: how many examples the teacher trained on
        self.auto_layers: Optional[dict] = None  # layer_strategy auto: the kept layers and every layer's influence
        self.role_labels: dict[str, str] = {}  # report labels of assistants and of a task kind's own students
        self.epoch_hook: Optional[Callable[[str, dict], None]] = None  # (stage, epoch row): a search's pruner
        self.role_models: dict[str, str] = {}  # architecture of roles other than teacher and students (assistants)
        self.stage_dirs: dict[str, Path] = {}  # stages living outside run_dir (a seed's shared teacher)
        # `leankd compress`/`export`: build only these targets into the finished run's report, timed beside the fp32
        # student (None: a full run builds the recipe's targets and measures every model)
        self.add_targets = add_targets
        # compress/export (with or without --remeasure) only measure and build: a stage they would train is an error
        self.require_finished = require_finished or add_targets is not None
        self.replaced_files: list[str] = []  # artifact files (relative) a rebuilt target no longer uses
        self.reset_finetune()  # under torchrun: QAT's fine-tuning, done by every rank before rank 0 builds
        self.user_callbacks = list(callbacks or [])
        self.report_to = list(report_to or [])  # loggers besides the recipe's `logging:` (the Python API's report_to)
        self.events = CallbackList()  # set up by `run` (progress, loggers, the user's callbacks)
        self.stage_prefix = ""

    # ---------------------------------------------------------------------------------------------------
    def build_task(self) -> Task:
        from .tasks import build_task

        channels_last = self.recipe.train.channels_last or self.recipe.stage_train("teacher").channels_last
        task = build_task(self.recipe.data, self.device, self.recipe.split_seed, channels_last=channels_last)
        apply_named_metric(self.recipe, task)
        return task

    def run(self) -> dict:
        """Run the recipe holding the run directory's lock (one process per run dir; see runlock.py). A full or
        read-only disk anywhere in the run becomes a clear error naming the directory."""
        from .rundir import recover
        from .runlock import run_lock

        self.events = self.make_events()  # an unknown logger or a missing package: an error before anything
        try:
            with contextlib.ExitStack() as held:
                def lock() -> None:  # the lock belongs to the job: rank 0 holds it for every rank
                    held.enter_context(run_lock(self.run_dir, "compress" if self.add_targets is not None else "run",
                                                log=self.log))
                    recover(self.run_dir)  # a kill in the middle of the last commit

                dist.on_main(lock)
                return self._run()
        except OSError as e:
            if e.errno in WRITE_ERRNOS:
                raise write_error(e, self.run_dir) from None
            raise
        finally:
            self.events.close()

    def make_events(self) -> CallbackList:
        """Progress, the loggers of `logging:` and `report_to` (none for compress/export: they train nothing) and the
        user's callbacks (callbacks/plan.py)."""
        from .callbacks.plan import run_events

        names = [*self.recipe.logging, *self.report_to] if self.add_targets is None else []
        return run_events(names, self.run_dir, self.recipe.name, self.console, self.quiet, self.user_callbacks)

    def _run(self) -> dict:
        r = self.recipe
        torch.manual_seed(r.seed)
        task = self.build_task()
        data_fp, teacher_data_fp = data_fingerprints(r, task)
        self.log(f"[bold]leankd[/] run '{r.name}' on {self.device} -> {self.run_dir}")
        self.log(f"data: {r.data.source}: {task.summary()}")

        # build every model first: class mismatches and bad names fail before any training
        teacher_model = build_model(r.teacher, task.num_classes, "teacher", task.model_defaults())
        torch.manual_seed(r.seed)
        student_model_cfg = self.student_config(task)
        student_init = build_model(student_model_cfg, task.num_classes, "student", task.model_defaults())
        for model in (teacher_model, student_init):
            task.prepare_model(model)  # e.g. text: tokenize the data the way each model reads it
        self.preflight(task, teacher_model, student_init)
        # everything the recipe alone decides is checked: only now is the run directory written. A finished run's
        # report, recipe.yaml and artifacts stay until the new report replaces them (rundir.commit).
        dist.on_main(lambda: self.prepare_run_dir(task))
        self.events.on_run_start(self.run_dir, stage_plan(r, with_seeds=self.add_targets is None))

        teacher = self.teacher_stage(task, teacher_model, teacher_data_fp)
        stages = {"teacher": teacher}
        self.student_stages(task, teacher, student_init, student_model_cfg, data_fp, teacher_data_fp, stages)
        several = r.seeds and len(r.seeds) > 1 and self.add_targets is None  # compress/export keep the seeds block
        seed_values = self.other_seeds(task, teacher, student_model_cfg) if several else None
        self.finetune_targets(task, stages)  # under torchrun: QAT's fine-tuning, data-parallel on every rank
        if not dist.is_main():
            return None  # everything has trained: rank 0 measures, builds the artifacts and reports on its own
        with dist.alone():
            report = self.report(task, stages, seed_values)
        for name in ("report.json", "report.md"):
            if (self.run_dir / name).exists():
                self.events.on_artifact(self.run_dir / name, "report")
        self.events.on_run_end(report)
        return report

    def prepare_run_dir(self, task: Task) -> None:
        """Rank 0, once the recipe, data and models have passed every check: the run directory's first writes."""
        if self.force:  # --force redoes everything of this run, its own teacher cache too (a shared cache_dir stays)
            shutil.rmtree(self.run_dir / "teacher_cache", ignore_errors=True)
        if not (self.run_dir / "report.json").exists():  # nothing finished to disagree with: record the recipe now
            write_text_atomic(self.run_dir / "recipe.yaml", dump_recipe(self.recipe))
        task.save(self.run_dir)

    def teacher_stage(self, task: Task, teacher_model: nn.Module, teacher_data_fp: dict) -> StageResult:
        """The teacher: trained (or loaded from its checkpoint) on the training split or its `limit_train` subset."""
        r = self.recipe
        teacher_task, teacher_cfg = task, r.teacher
        if r.teacher.limit_train is not None and r.teacher.limit_train >= task.split_size("train"):
            teacher_cfg = r.teacher.model_copy(update={"limit_train": None})  # keeps every row: same as no limit
        elif r.teacher.limit_train is not None:
            teacher_task = task.with_train_subset(r.teacher.limit_train, r.split_seed)
            self.teacher_examples = teacher_task.split_size("train")
            self.log(f"teacher: fine-tuned on a stratified {teacher_task.split_size('train')} of the "
                     f"{task.split_size('train')} training examples (teacher.limit_train); students use all")
        return self.stage("teacher", teacher_model, teacher_task, r.stage_train("teacher"),
                          supervised_loss(r.stage_train("teacher").label_smoothing, task=task),
                          extra_fp=teacher_data_fp, model_cfg=teacher_cfg)

    def student_stages(self, task: Task, teacher: StageResult, student_init: nn.Module, student_model_cfg: ModelConfig,
                       data_fp: dict, teacher_data_fp: dict, stages: dict) -> None:
        """This seed's baseline, KD student and the task kind's own students, added to `stages` (trained or reused)."""
        r = self.recipe
        student_init, data_fp = self.init_from_teacher(student_init, teacher.model, data_fp)
        student_cfg = r.stage_train("student")
        if r.baseline:
            stages["baseline"] = self.stage("baseline", copy.deepcopy(student_init), task, student_cfg,
                                            supervised_loss(student_cfg.label_smoothing, task=task),
                                            extra_fp=data_fp, model_cfg=student_model_cfg)
        kind = TASK_KINDS.get(r.data.task)
        if not kind.replaces_student:
            self.kd_student(task, teacher, student_init, student_model_cfg, data_fp, teacher_data_fp, stages)
        if kind.student_stages is not None:
            self.role_labels.update(kind.student_stages(StudentStages(
                self, task, teacher, student_init, student_model_cfg, data_fp, teacher_data_fp, stages)))

    def init_from_teacher(self, student: nn.Module, teacher: nn.Module, data_fp: dict) -> tuple[nn.Module, dict]:
        """`student.init_from_teacher`: every student starts from the trained teacher's embeddings, head and chosen
        layers (DistilBERT's initialization), the baseline too, so the KD gain still compares losses at one start.
        Their stages then depend on the teacher's weights (in their fingerprint); unset, nothing changes."""
        layers = getattr(self.recipe.student, "init_from_teacher", None)
        if layers is None:
            return student, data_fp
        student = copy.deepcopy(student)
        kept = copy_teacher_layers(student, teacher, layers)
        self.log(f"students start from the teacher's layers {kept} (student.init_from_teacher)")
        return student, {**data_fp, "init_from_teacher": {"teacher": self.stage_fp("teacher"), "layers": kept}}

    def kd_student(self, task: Task, teacher: StageResult, student_init: nn.Module, student_model_cfg: ModelConfig,
                   data_fp: dict, teacher_data_fp: dict, stages: dict) -> None:
        """The recipe's logit (+ feature) KD student, its logit-only control and its assistants, added to `stages`."""
        r = self.recipe
        student_cfg = r.stage_train("student")
        reference = stages["baseline"].model if "baseline" in stages else student_init
        self.feature_pairs = self.resolve_feature_pairs(task, teacher.model, reference, trained="baseline" in stages)
        kd_loss = build_loss(r.distill, student_cfg.label_smoothing, self.feature_pairs, task=task)
        teacher.model.to("cpu")  # only the distilling copy below stays resident on the training device (if any)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kd_fp = {**data_fp, "teacher": self.stage_fp("teacher"), "teacher_precision": r.teacher.precision}
        kd_task, cache_fp = task, dict(teacher_data_fp)  # KD students' data (text: plus augmented, unlabeled texts)
        if r.distill.augment is not None:
            kd_task = self.transfer_set(task)
            kd_fp["augment"] = cache_fp["augment"] = r.distill.augment.model_dump()
        if r.distill.features and r.distill.feature_control:  # what the feature losses buy, at the same budget
            live = self.live_teacher(teacher.model, kd_task, channels_last=student_cfg.channels_last)
            stages[LOGIT_KD_ROLE] = self.stage(LOGIT_KD_ROLE, copy.deepcopy(student_init), kd_task, student_cfg,
                                               build_loss(r.distill, student_cfg.label_smoothing, task=task),
                                               teacher=live, model_cfg=student_model_cfg, extra_fp=kd_fp)
            del live
        if r.teacher.cache:  # the student's result depends on which views it replays (and on top-k storage)
            kd_fp["teacher_cache_views"] = r.teacher.cache_views
            if r.teacher.cache_top_k:
                kd_fp["teacher_cache_top_k"] = r.teacher.cache_top_k
        if r.distill.assistants:  # progressive distillation: teacher -> assistants -> student
            live, kd_fp = self.assistants(task, teacher, stages, kd_fp, student_cfg.channels_last)
        else:
            live = self.live_teacher(teacher.model, kd_task, channels_last=student_cfg.channels_last)
        make_teacher = (lambda: self.cached_teacher(kd_task, live, cache_fp)) if r.teacher.cache else None
        stages["student"] = self.stage("student", copy.deepcopy(student_init), kd_task, student_cfg, kd_loss,
                                       teacher=live, model_cfg=student_model_cfg, extra_fp=kd_fp,
                                       make_teacher=make_teacher)
        if kd_task is not task:
            stages["student"].training_extra["transfer_set"] = kd_task.transfer_set
        if self.feature_pairs and dist.is_main():  # a timing: taken once, by rank 0
            self.log("measuring what each feature loss costs per step ...")
            stages["student"].training_extra["feature_costs"] = feature_costs(
                student_init, build_loss(r.distill, student_cfg.label_smoothing, task=task),
                feature_terms(r.distill, self.feature_pairs), kd_task, live, student_cfg.batch_size,
                student_cfg.precision, seed=r.seed)
        del live

    # ------------------------------------------------------------------------------------------ seeds
    def other_seeds(self, task: Task, teacher: StageResult, student_model_cfg: ModelConfig
                    ) -> dict[int, dict[str, Optional[float]]]:
        """`seeds:` the students (and with `seeds_teacher: per_seed` the teacher) of every seed but the main one,
        each in `<run>/seed<k>/`, on the main seed's split; returns their primary metric per seed and role."""
        return {seed: self.seed_pipeline(seed).train_seed(task, teacher, student_model_cfg)
                for seed in self.recipe.seeds if seed != self.recipe.seed}

    def seed_pipeline(self, seed: int) -> "Pipeline":
        """A pipeline for one more seed: the recipe with that seed and the main split pinned (data.split_seed), so its
        stage fingerprints are those of a standalone run of that seed on this split. With `seeds_teacher: once` it
        reads the main teacher's stage."""
        r = self.recipe
        recipe = r.model_copy(update={"seed": seed, "seeds": None,
                                      "data": r.data.model_copy(update={"split_seed": r.split_seed})})
        child = Pipeline(recipe, self.run_dir / f"seed{seed}", force=self.force, resume=self.resume, quiet=self.quiet,
                         console=self.console, stop_after_epoch=self.stop_after_epoch)
        child.epoch_hook = self.epoch_hook
        child.events, child.stage_prefix = self.events, f"{self.stage_prefix}seed{seed}/"
        child.require_finished = self.require_finished
        if r.seeds_teacher == "once":
            child.stage_dirs["teacher"] = self.run_dir / "teacher"
        return child

    def train_seed(self, task: Task, teacher: StageResult, student_model_cfg: ModelConfig
                   ) -> dict[str, Optional[float]]:
        """Train (or reuse) this seed's stages the way `run` does, then measure their quality (only: cost and latency
        do not depend on the seed and are measured once, on the main seed's models)."""
        r = self.recipe
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"[bold]seed {r.seed}[/] (split of seed {r.split_seed}) -> {self.run_dir}")
        data_fp, teacher_data_fp = data_fingerprints(r, task)
        stages = {}
        if "teacher" not in self.stage_dirs:  # seeds_teacher: per_seed
            torch.manual_seed(r.seed)  # the same initial weights as a standalone run with this seed
            teacher_model = build_model(r.teacher, task.num_classes, "teacher", task.model_defaults())
            task.prepare_model(teacher_model)
            teacher = stages["teacher"] = self.teacher_stage(task, teacher_model, teacher_data_fp)
        torch.manual_seed(r.seed)
        student_init = build_model(student_model_cfg, task.num_classes, "student", task.model_defaults())
        task.prepare_model(student_init)
        self.student_stages(task, teacher, student_init, student_model_cfg, data_fp, teacher_data_fp, stages)
        values, primary = {}, task_primary(task)
        for role, st in stages.items():
            model = load_weights(copy.deepcopy(st.model), self.run_dir / role / "model.safetensors")
            values[role] = primary_value({"quality": task.quality(prepare_for_measuring(model, task),
                                                                  task.eval_split)}, primary)
        return values

    def preflight(self, task: Task, teacher: nn.Module, student: nn.Module) -> None:
        """Every check the recipe, the data and the built (untrained) models decide, before any training or any
        write: a mistake found after the teacher has trained wastes that training."""
        from .kd.layer_choice import check_probe, pick_candidates
        from .kd.taps import resolve_module

        r = self.recipe
        if r.distill.features and not task.same_inputs(teacher, student):
            raise RecipeError("distill.features compare teacher and student position by position, but the student "
                              f"({r.student.model}) reads the text with another tokenizer than the teacher "
                              f"({r.teacher.model}): drop the feature losses (logit KD works across vocabularies) or "
                              "use a student with the teacher's tokenizer")
        for i, term in enumerate(r.distill.features):  # module names are the same before and after training
            if term.pairs == "auto":
                check_probe(task, f"distill.features[{i}].pairs")
                pick_candidates(student, term.candidates.student, "student")
                pick_candidates(teacher, term.candidates.teacher, "teacher")
                continue
            for s_name, t_name in term.pairs:
                resolve_module(student, s_name, f"distill.features[{i}].pairs: the student ({r.student.model})")
                resolve_module(teacher, t_name, f"distill.features[{i}].pairs: the teacher ({r.teacher.model})")
        if getattr(r.student, "init_from_teacher", None) is not None:  # widths and layer counts, on copies
            copy_teacher_layers(copy.deepcopy(student), copy.deepcopy(teacher), r.student.init_from_teacher)
        k = r.teacher.cache_top_k
        if r.teacher.cache and k is not None and not 1 <= k < task.num_classes:
            raise RecipeError(f"teacher.cache_top_k = {k} must be between 1 and {task.num_classes - 1} (the task has "
                              f"{task.num_classes} classes): lower it, or leave it unset to store every logit")
        if r.distill.augment is not None and not hasattr(task, "with_transfer_set"):
            raise RecipeError(f"distill.augment makes new texts, but data.task is {task.kind}: remove distill.augment "
                              "(images and audio augment through data.augment)")
        build_loss(r.distill, r.stage_train("student").label_smoothing, task=task)  # the loss fits the task
        self.check_world_size(task)
        with torch.random.fork_rng(devices=[]):  # building them here must not shift any later initialization
            for i, cfg in enumerate(r.distill.assistants, start=1):
                build_model(cfg, task.num_classes, f"assistant{i}", task.model_defaults())

    def check_world_size(self, task: Task) -> None:
        """Every stage's global batch splits over this run's processes, and the data has a row for each."""
        world = dist.world_size()
        check_global_batches(self.recipe, world)
        parts = world * max(cfg.accumulate for cfg in stage_trains(self.recipe).values())
        if parts > 1 and task.split_size("train") < parts:
            raise RecipeError(f"the training split has {task.split_size('train')} examples, fewer than the {parts} "
                              "shares each batch is cut into (processes x train.accumulate): start fewer processes "
                              "or lower train.accumulate")

    def assistants(self, task: Task, teacher: StageResult, stages: dict, kd_fp: dict, channels_last: bool):
        """Teacher-assistant stages (Mirzadeh et al. 2020), each an ordinary cached stage distilled with the
        recipe's logit loss and the student's training settings (+ its own `train:` overrides). Returns the
        student's guide (the last assistant, or with `assistant_mode: dense` the teacher and every assistant
        together) and the student's fingerprint parts."""
        from .kd.teacher import GuideEnsemble

        r = self.recipe
        dense = r.distill.assistant_mode == "dense"
        guides, guide_fps = [teacher.model], [self.stage_fp("teacher")]
        loss = build_loss(r.distill, r.stage_train("student").label_smoothing, task=task)

        def guided_by(items: list) -> list:  # who teaches the next stage: all so far (dense) or the last one
            return list(items) if dense else items[-1:]

        def guide(models):
            lives = [self.live_teacher(m, task, channels_last=channels_last) for m in guided_by(models)]
            return lives[0] if len(lives) == 1 else GuideEnsemble(lives, guide_temperature(r.distill))

        for i, cfg in enumerate(r.distill.assistants, start=1):
            role = f"assistant{i}"
            torch.manual_seed(r.seed + i)
            model = build_model(cfg, task.num_classes, role, task.model_defaults())
            task.prepare_model(model)
            live = guide(guides)
            fp = {**kd_fp, "guides": guided_by(guide_fps)}  # the guides say the mode
            stages[role] = self.stage(role, model, task, cfg.train.apply(r.stage_train("student")), loss,
                                      teacher=live, model_cfg=cfg, extra_fp=fp)
            del live
            self.role_labels[role] = f"Assistant {i} ({cfg.model})"
            self.role_models[role] = cfg.model
            guides.append(stages[role].model.to("cpu"))
            guide_fps.append(self.stage_fp(role))
        return guide(guides), {**kd_fp, "guides": guided_by(guide_fps)}

    def student_config(self, task: Task) -> ModelConfig:
        """The student's model settings, with `layer_strategy: auto` resolved to explicit layer indices: the
        pretrained checkpoint's layers ranked by block influence (1 - CKA between each layer's input and output)
        on a few training batches; the least influential are dropped. Deterministic for the same data and
        checkpoint, and the chosen indices are part of the stage fingerprints."""
        from .models.hf import keep_by_influence, rank_layers

        cfg = self.recipe.student
        kwargs = dict(cfg.kwargs)
        if kwargs.get("layer_strategy") != "auto":
            return cfg
        if not cfg.model.startswith("hf:"):
            raise RecipeError(f"student.kwargs.layer_strategy auto keeps layers of a Hugging Face checkpoint; "
                              f"{cfg.model} is not one (hf:...)")
        layers = kwargs.pop("layers", None)
        kwargs.pop("layer_strategy")
        if not isinstance(layers, int):
            raise RecipeError("student.kwargs: layer_strategy auto picks which layers to keep, so give their number "
                              f"(layers: 3), not {layers!r}")
        with torch.random.fork_rng(devices=[]):  # building the probe model must not shift the student's init
            full = create_model(cfg.model, num_classes=task.num_classes, **kwargs).to(task.device)
        task.prepare_model(full)
        batches = task.train_batches(0, 64, self.recipe.split_seed)  # the same layers whatever the run's seed
        sample = [task.model_inputs(full, next(batches).inputs) for _ in range(min(4, task.steps_per_epoch(64)))]
        influence = rank_layers(full, sample)
        del full, sample
        kept = keep_by_influence(influence, layers)
        self.auto_layers = {"kept": kept, "influence": [round(v, 4) for v in influence]}
        self.log(f"student: keeps layers {kept} of {cfg.model} (block influence 1 - CKA per layer: "
                 + ", ".join(f"{v:.3f}" for v in influence) + ")")
        return cfg.model_copy(update={"kwargs": {**kwargs, "layers": kept}})

    def transfer_set(self, task: Task) -> Task:
        """Tang et al.: the training texts plus augmented, unlabeled ones (the teacher labels them; `teacher.cache`
        makes that once)."""
        from .data.text_augment import AugmentSettings

        kd_task = task.with_transfer_set(AugmentSettings(**self.recipe.distill.augment.model_dump()), self.recipe.seed)
        t = kd_task.transfer_set
        self.log(f"augmentation: {t['augmented']} new unlabeled texts from {t['original']} training texts "
                 f"({t['copies_tried']} tries each); the KD student trains on {t['original'] + t['augmented']}")
        if not self.recipe.teacher.cache:
            self.log("[yellow]note:[/] without teacher.cache the teacher labels the augmented texts again every epoch")
        return kd_task

    def resolve_feature_pairs(self, task: Task, teacher: nn.Module, student: nn.Module, trained: bool = True
                              ) -> Optional[list[list[tuple[str, str]]]]:
        """The (student, teacher) module pairs of every `distill.features` term; `pairs: auto` terms are chosen by
        CKA on a few training batches, with the trained baseline standing in for the student (same architecture,
        trained, so its layers mean something) and the analysis saved as `layers.json`."""
        from .kd.layer_choice import auto_pairs
        from .kd.taps import resolve_module

        r = self.recipe
        if not r.distill.features:
            return None
        resolved = []
        for i, term in enumerate(r.distill.features):
            if term.pairs != "auto":
                for s_name, t_name in term.pairs:  # a wrong name fails now, not after the teacher has trained
                    resolve_module(student, s_name, "student")
                    resolve_module(teacher, t_name, "teacher")
                resolved.append([tuple(p) for p in term.pairs])
                continue
            if not trained:
                self.log(f"distill.features[{i}]: no trained baseline (baseline: false), so the CKA analysis uses "
                         "the student's initial weights")
            # rank 0 analyses and every rank takes its choice: a near-tie decided differently on two ranks would give
            # them different losses (and hang DDP)
            analysis = dist.on_main(lambda: self._analyze_layers(task, student, teacher, term.top_k,
                                                                 term.candidates.student, term.candidates.teacher))
            pairs = auto_pairs(analysis)
            if dist.is_main():
                write_json_atomic(self.run_dir / f"layers-{i}.json", analysis.as_dict())
            self.log(f"distill.features[{i}] ({term.kind}): pairs chosen by CKA: "
                     + ", ".join(f"{s}->{t}" for s, t in pairs) + f" (analysis: layers-{i}.json)")
            resolved.append(pairs)
        return resolved

    def _analyze_layers(self, task: Task, student: nn.Module, teacher: nn.Module, top_k: Optional[int],
                        student_patterns: Optional[list[str]], teacher_patterns: Optional[list[str]]):
        """The CKA analysis behind both `pairs: auto` and `leankd layers`, with the recipe's sample size and seed."""
        from .kd.layer_choice import analyze_layers, pick_candidates

        r = self.recipe
        return analyze_layers(student, teacher, task, top_k=top_k, seed=r.seed, batches=r.distill.analysis_batches,
                              batch_size=min(128, r.stage_train("student").batch_size),
                              student_layers=pick_candidates(student, student_patterns, "student"),
                              teacher_layers=pick_candidates(teacher, teacher_patterns, "teacher"))

    def layer_analysis(self, top_k: Optional[int] = None, student_patterns: Optional[list[str]] = None,
                       teacher_patterns: Optional[list[str]] = None):
        """`leankd layers` (kd/layer_run.py): the CKA analysis of the run's teacher and student."""
        from .kd.layer_run import layer_analysis

        return layer_analysis(self, top_k, student_patterns, teacher_patterns)


def check_global_batches(recipe: Recipe, world: int) -> None:
    """`batch_size` is the global batch: on `world` processes each stage's must split into equal shares, each at least
    `train.accumulate` examples (one per micro-batch). `leankd run --nproc` asks before it starts any process."""
    for where, cfg in stage_trains(recipe).items():
        if cfg.batch_size % world or cfg.batch_size // world < cfg.accumulate:
            split = f" and {cfg.accumulate} micro-batches each" if cfg.accumulate > 1 else ""
            raise RecipeError(
                f"{where}.batch_size = {cfg.batch_size} is the global batch, cut into equal shares for {world} "
                f"process(es){split}: make it a multiple of {world * cfg.accumulate}"
                + (" (or start fewer processes)" if world > 1 else " (or lower train.accumulate)"))


def stage_trains(recipe: Recipe) -> dict:
    """{recipe path: resolved TrainConfig} of every stage that trains: the students, the teacher, each assistant."""
    cfgs = {"train": recipe.stage_train("student"), "teacher.train": recipe.stage_train("teacher")}
    cfgs.update({f"distill.assistants[{i}].train": c.train.apply(recipe.stage_train("student"))
                 for i, c in enumerate(recipe.distill.assistants)})
    return cfgs
