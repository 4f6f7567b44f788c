"""The measuring phase of a run: every saved model (and every artifact built from the student) measured together,
the report composed from the measurements and the run's notes, and committed with its artifacts in one step
(rundir.commit). `leankd compress`/`export` on a finished run measure only the new artifacts, beside the fp32 student
(`added_artifacts_report`).

`MeasurePhase` is the part of `Pipeline` (pipeline.py) that does this; the attributes below are set by its
constructor.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core.taskkind import TASK_KINDS
from ..errors import LeanKDError
from ..models import load_weights
from ..recipe import Recipe, dump_recipe
from ..report import build_report
from ..report.metric import task_primary
from ..report.notes import cache_notes, feature_notes, finish_report, qat_notes, transfer_notes
from ..report.schema import headline, primary_value
from ..stages import StageResult
from ..tasks.base import Task
from .models import measure_models, model_entry


class MeasurePhase:
    """Measures a run's models and artifacts and commits its report. Needs `compress` (compress/run.py) and
    `log` (stages.py) beside it."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    add_targets: Optional[list[str]]  # compress/export: only these targets, timed beside the fp32 student
    failed_targets: dict[str, str]  # target -> why it failed (a note in the report)
    replaced_files: list[str]  # artifact files (relative) a rebuilt target no longer uses
    auto_layers: Optional[dict]
    teacher_examples: Optional[int]
    role_labels: dict[str, str]
    role_models: dict[str, str]
    require_finished: bool  # compress/export: the run's recipe.yaml stays as it is (they add to its results)
    recorded_targets: Optional[set[str]] = None  # compress/export: the targets the run's recipe.yaml lists

    def report(self, task: Task, stages: dict[str, StageResult],
               seed_values: Optional[dict[int, dict[str, Optional[float]]]] = None) -> dict:
        """Measure, build the report and put it in place (with its artifacts) in one commit at the end."""
        from ..rundir import commit, discard_staging

        # compress/export extend the run's results, not its recipe: recipe.yaml stays byte for byte (a later
        # `leankd run` of it reuses every stage), and the artifacts its compress.targets does not list are marked
        # `added_after_run` in the report
        keep_recipe = self.require_finished and (self.run_dir / "recipe.yaml").is_file()
        self.recorded_targets = self._recorded_targets() if keep_recipe else None
        previous = self._previous_report() if self.add_targets is not None else None
        if self.add_targets is not None and previous is None:
            self.log("no finished report to add to: building every target and measuring every model")
        elif previous is not None and not all(st.reused for st in stages.values()):
            self.log("a stage was trained again: re-measuring every model and rebuilding every target")
            previous = None
        try:
            if previous is not None:
                report = self.added_artifacts_report(task, stages, previous)
            else:
                report = self.full_report(task, stages, seed_values)
            kept = commit(self.run_dir, report, None if keep_recipe else dump_recipe(self.recipe),
                          artifacts="merge" if previous is not None else "replace", remove=self.replaced_files)
            if kept is not None:
                self.log(f"the earlier report of this run directory (another recipe) is kept in "
                         f"{kept.relative_to(self.run_dir)}/; stages whose settings changed were trained again")
        except BaseException:
            discard_staging(self.run_dir)
            raise
        return report

    def _recorded_targets(self) -> set[str]:
        from ..recipe import load_recipe

        return set(load_recipe(self.run_dir / "recipe.yaml").compress.targets)

    def _previous_report(self) -> Optional[dict]:
        from ..report import load_report

        if not (self.run_dir / "report.json").exists():
            return None
        try:
            return load_report(self.run_dir)
        except LeanKDError as e:
            self.log(f"the run's report.json cannot be extended ({e})")
            return None

    def _saved(self, stages: dict[str, StageResult], roles) -> dict[str, nn.Module]:
        return {role: load_weights(copy.deepcopy(stages[role].model), self.run_dir / role / "model.safetensors")
                for role in roles}

    def _artifact_entries(self, task: Task, built: dict, measured: dict) -> dict:
        """The report blocks of built artifacts, with their accuracy drop against the fp32 student."""
        r = self.recipe
        models = {}
        for role, (_, info) in built.items():
            drop = 100 * (headline(measured["student"]) - headline(measured[role]))  # accuracy (regression: r)
            info.update(accuracy_drop_points=round(drop, 4), max_drop_points=r.compress.max_accuracy_drop,
                        flagged=drop > r.compress.max_accuracy_drop)
            if self.recorded_targets is not None and info["target"] not in self.recorded_targets:
                info["added_after_run"] = True  # by `leankd compress`/`export`: not in the run's recipe.yaml
            if info["flagged"]:
                self.log(f"[bold yellow]warning:[/] {info['target']} loses {drop:.2f} points "
                         f"({'Pearson r x100' if task.regression else 'accuracy'}) against the fp32 "
                         f"student (threshold {r.compress.max_accuracy_drop}): flagged in the report")
            art = built[role][0]
            training = info.pop("training", None)  # targets that fine-tune (QAT) report their training like stages
            history = info.pop("history", None)
            models[role] = model_entry(role, r.student.model, f"{info['target']} of the KD student", measured[role],
                                       training, history)
            models[role]["label"] = f"KD student {info['target']}"
            models[role]["artifact"] = info
            if art.params is not None:  # a target that removes weights (vocab-trim): its own count, not the base's
                models[role]["cost"] = {**models[role]["cost"], "params": art.params, "trainable_params": art.params}
        return models

    def added_artifacts_report(self, task: Task, stages: dict[str, StageResult], previous: dict) -> dict:
        """`leankd compress`/`export` on a finished run: build the requested targets and add them to the report,
        keeping every model and artifact already there. The fp32 models are not measured again; each new artifact
        is timed interleaved with the fp32 student, re-timed beside it, and its x-faster figures compare with that
        re-timing (`artifact.reference_latency`), so machine drift since the run cannot pose as a speed-up."""
        from ..compress.targets import TRAINING_TARGETS

        r = self.recipe
        targets = [t for t in r.compress.targets if t in set(self.add_targets)]
        roles = ["student"] + (["teacher"] if TRAINING_TARGETS.intersection(targets) else [])
        saved = self._saved(stages, roles)
        built = self.compress(task, saved["student"], saved.get("teacher"), targets=targets)
        self.log(f"measuring {', '.join(role for role in built) or 'nothing new'} beside the fp32 student "
                 "(the other models keep their numbers; --remeasure re-times everything) ...")
        measured = measure_models({"student": saved["student"]}, task, r.measure,
                                  artifacts={role: (a.runnable, "student", a.files or a.path)
                                             for role, (a, _) in built.items()})
        added = self._artifact_entries(task, built, measured)
        reference = {k: v for k, v in measured["student"]["latency"].items() if k == "cpu"}
        for entry in added.values():
            entry["artifact"]["reference_latency"] = reference
        models = {**previous["models"], **added}  # a rebuilt target replaces its earlier entry in place
        self.replaced_files = [old["artifact"]["path"] for role, old in previous["models"].items()  # removed at commit
                               if role in added and old.get("artifact")
                               and old["artifact"]["path"] != added[role]["artifact"]["path"]]
        tried = {info["target"] for _, info in built.values()} | set(self.failed_targets)
        notes = [n for n in previous.get("notes", [])  # this call's outcome replaces an earlier failure note
                 if not n.startswith("Quantization-aware distillation")
                 and not any(n.startswith(f"compression target {t} failed") for t in tried)]
        earlier = {(m.get("artifact") or {}).get("target") for m in previous["models"].values()}
        notes += [f"compression target {t} failed: {why}"
                  + (" (the artifact built earlier is kept in the report)" if t in earlier else "")
                  for t, why in self.failed_targets.items()]
        if added:
            b1 = (reference.get("cpu") or {}).get("batch_1", {}).get("median_ms")
            row = (((previous["models"].get("student") or {}).get("latency") or {}).get("cpu") or {}).get(
                "batch_1", {}).get("median_ms")
            timing = (f" (CPU batch 1: {b1:.3f} ms now, {row:.3f} ms in the student's row)"
                      if b1 is not None and row is not None else "")
            notes.append(f"{', '.join(a['artifact']['target'] for a in added.values())} added to the finished run "
                         "without re-measuring the fp32 models: each was timed interleaved with the fp32 student, "
                         f"re-timed beside it{timing}, and its x-faster figures against the student compare with that "
                         "re-timing; its ratios against the teacher use the teacher's earlier timing. "
                         "`leankd compress --remeasure` measures every model and artifact together.")
        notes += qat_notes(models)
        return build_report({**previous["run"], "run_dir": str(self.run_dir)}, models, notes,
                            seeds=previous.get("seeds"))

    def full_report(self, task: Task, stages: dict[str, StageResult],
                    seed_values: Optional[dict[int, dict[str, Optional[float]]]] = None) -> dict:
        r = self.recipe
        self.log(f"measuring {', '.join(stages)} (from the saved weights) ...")
        saved = self._saved(stages, stages)
        built = self.compress(task, saved["student"], saved["teacher"]) if r.compress.targets else {}
        measured = measure_models(saved, task, r.measure,
                                  artifacts={role: (a.runnable, "student", a.files or a.path)
                                             for role, (a, _) in built.items()})
        models = {}
        for role, st in stages.items():
            architecture = self.role_models.get(role) or (r.teacher if role == "teacher" else r.student).model
            history = self.run_dir / role / "metrics.jsonl"
            training = dict(st.training, **st.training_extra) if st.training and st.training_extra else st.training
            models[role] = model_entry(role, architecture, st.origin, measured[role], training,
                                       f"{role}/metrics.jsonl" if history.exists() else None)
            if role in self.role_labels:
                models[role]["label"] = self.role_labels[role]
        models.update(self._artifact_entries(task, built, measured))
        notes = [f"compression target {t} failed: {why}" for t, why in self.failed_targets.items()]
        if self.auto_layers is not None:
            a = self.auto_layers
            notes.append(f"The student keeps layers {a['kept']} of its checkpoint, chosen by block influence (1 - "
                         f"linear CKA between a layer's input and output on training sentences; per layer: "
                         f"{a['influence']}); the last layer is always kept.")
        if self.teacher_examples is not None:
            notes.append(f"The teacher was fine-tuned on a stratified subset of {self.teacher_examples} of the "
                         f"{task.split_size('train')} training examples (teacher.limit_train); the students trained "
                         "on all of them.")
        if task.kind in TASK_KINDS:  # a task built by hand (leankd.distill with a Task object) has no kind's notes
            notes += TASK_KINDS.get(task.kind).report_notes(models)
        from ..compress.targets import TRAINING_TARGETS

        built_targets = {info["target"] for _, info in built.values()}
        if r.distill.features and TRAINING_TARGETS & built_targets:
            notes.append("QAT fine-tuning distils the logits only: BatchNorm folding traces the student into a flat "
                         "graph, so the feature losses' module taps would not find their modules.")
        seeds = self.seeds_block(task, models, seed_values) if seed_values else None  # its note: under its table
        return finish_report(r.name, self.run_dir, r.seed, task, models, self.device, write=False,
                             extra_notes=notes + qat_notes(models) + feature_notes(models) + cache_notes(models)
                             + transfer_notes(models), seeds=seeds)

    def seeds_block(self, task: Task, models: dict, seed_values: dict[int, dict[str, Optional[float]]]) -> dict:
        """The report's `seeds` block: each seed-trained role's primary metric per seed (accuracy, false rejections
        at the target false-alarm rate, sequence error...), mean and sd, and every KD student paired with the
        baseline seed by seed (+ = KD better, whatever the metric's direction)."""
        from ..seeds import seeds_summary

        r = self.recipe
        primary = task_primary(task)
        once = r.seeds_teacher == "once"
        roles = [role for role, m in models.items() if not m.get("artifact") and not (once and role == "teacher")]
        values = {role: [primary_value(models[role], primary) if seed == r.seed else seed_values[seed].get(role)
                         for seed in r.seeds]
                  for role in roles}
        compared = [role for role in roles if role not in ("teacher", "baseline") and not role.startswith("assistant")]
        teacher = ("trained once, with the main seed, and shared by every seed's students" if once
                   else "trained once per seed")
        note = (f"{len(r.seeds)} seeds ({', '.join(map(str, r.seeds))}) on one split (split seed {r.split_seed}); "
                f"the teacher was {teacher}. Quality is measured for every seed's models; cost, latency and memory "
                f"once per architecture, on the main seed's ({r.seed}) models, which the results table shows.")
        return seeds_summary(r.seeds, values, main_seed=r.seed, split_seed=r.split_seed, metric=primary["name"],
                             higher_is_better=primary.get("higher_is_better") is not False,
                             label=primary.get("label"), teacher=r.seeds_teacher, compared=compared, note=note)
