"""`leankd layers` on a run: which teacher layers matter and which student layers match them (linear CKA), on the
run's trained teacher and baseline when they exist. A function of the run's `Pipeline` (its recipe, run directory
and CKA settings), kept out of pipeline.py, which runs the recipe."""
from __future__ import annotations

from typing import Optional

import torch

from ..io import write_json_atomic
from ..models import load_weights
from ..stages import build_model


def layer_analysis(pipeline, top_k: Optional[int] = None, student_patterns: Optional[list[str]] = None,
                   teacher_patterns: Optional[list[str]] = None):
    """`leankd layers`: the CKA analysis on the run's trained teacher and baseline when they exist (else the
    recipe's checkpoint or a fresh init, said in the returned notes); patterns default to the first
    `pairs: auto` term's candidates. Writes `layers.json` into the run directory."""
    r = pipeline.recipe
    task = pipeline.build_task()
    teacher = build_model(r.teacher, task.num_classes, "teacher", task.model_defaults())
    torch.manual_seed(r.seed)
    student = build_model(pipeline.student_config(task), task.num_classes, "student", task.model_defaults())
    for model in (teacher, student):
        task.prepare_model(model)
    notes = []
    for role, model, stage in (("teacher", teacher, "teacher"), ("student", student, "baseline")):
        weights = pipeline.run_dir / stage / "model.safetensors"
        if weights.exists():
            load_weights(model, weights)
            notes.append(f"{role}: trained weights from {weights}")
        elif role == "teacher" and r.teacher.checkpoint:
            notes.append(f"teacher: weights from {r.teacher.checkpoint}")
        else:
            notes.append(f"{role}: no trained weights in {pipeline.run_dir / stage} - randomly initialized, so the "
                         f"table describes architectures, not learned features (run the recipe first)")
    auto = next((t for t in r.distill.features if t.pairs == "auto"), None)
    student_patterns = student_patterns or (auto.candidates.student if auto else None)
    teacher_patterns = teacher_patterns or (auto.candidates.teacher if auto else None)
    top_k = top_k if top_k is not None else (auto.top_k if auto else None)  # what `pairs: auto` would pick
    analysis = pipeline._analyze_layers(task, student, teacher, top_k, student_patterns, teacher_patterns)
    pipeline.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(pipeline.run_dir / "layers.json", {**analysis.as_dict(), "notes": notes})
    return analysis, notes
