"""seq2seq: source -> target symbol sequences (data.seq), with word-, sequence-level and interpolation students
(distill.seq)."""
from __future__ import annotations

from ...core.taskkind import TaskKind, register_kind


def build(cfg, device, seed: int, channels_last: bool):
    from ..seq2seq import build_seq2seq_task

    return build_seq2seq_task(cfg, device, seed, channels_last=channels_last)


def model_defaults(cfg) -> dict:
    return {"src_vocab": 64}


def check(recipe) -> None:
    from ...recipe import SeqDistillConfig

    if recipe.distill.assistants:
        raise ValueError("distill.assistants (progressive distillation) is not supported for seq2seq yet: remove it")
    if recipe.distill.seq is None:
        object.__setattr__(recipe.distill, "seq", SeqDistillConfig())
    if recipe.teacher.limit_train is not None:
        raise ValueError("teacher.limit_train is not supported for seq2seq yet: use data.limit_train (every stage) "
                         "or remove it")
    if recipe.distill.features:
        raise ValueError("distill.features (layer losses) are not supported for seq2seq yet: remove them (word-level "
                         "KD is distill.seq.students: [word])")


KIND = register_kind(TaskKind(
    "seq2seq", build, model_defaults=model_defaults, check=check, data_sections=("seq",), distill_sections=("seq",),
    refusals={"augment": "seq2seq students learn from extra, unlabeled sources through distill.seq.extra_sources"},
    summary="source -> target sequences (data.seq); word and sequence accuracy, beam search"))
