"""The seq2seq students of a run (Kim & Rush 2016's table): word-level KD, sequence-level KD, sequence-level
interpolation and their mixtures with word-level KD — each one stage of the ordinary pipeline (same fingerprints,
checkpoints, `--resume`), differing only in the training pairs (a data step) and the loss."""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from ..kd.build import logit_loss, supervised_loss
from ..core import dist
from ..core.fingerprint import fingerprint
from ..stages import StageRunner, StudentStages
from .distill import build_or_load_outputs, training_pairs
from .extra_sources import collect_extra_sources, source_key

LABELS = {"word": "word-KD student", "seq": "seq-KD student", "interp": "seq-interp student",
          "seq+word": "seq-KD + word-KD student", "interp+word": "seq-interp + word-KD student",
          "seq+extra": "seq-KD + extra sources student", "seq+word+extra": "seq-KD + word-KD + extra sources student"}


def role_of(method: str, main: str) -> str:
    return "student" if method == main else "student_" + method.replace("+", "_")


def train_students(ctx: StudentStages) -> dict[str, str]:
    """Train every `distill.seq.students` method into `ctx.stages` (the main one as "student"): the seq2seq kind's
    `student_stages`. Returns each role's report label."""
    pipe, task, teacher, teacher_data_fp = ctx.runner, ctx.task, ctx.teacher, ctx.teacher_data_fp
    r = pipe.recipe
    cfg = r.distill.seq
    student_cfg = r.stage_train("student")
    teacher_fp = pipe.stage_fp("teacher")
    outputs = extra = None
    labels = {}
    if any(not m.startswith("word") for m in cfg.students):
        outputs = teacher_outputs(pipe, task, teacher.model, teacher_data_fp)
    if any(m.endswith("+extra") for m in cfg.students):
        extra = teacher_extra_outputs(pipe, task, teacher.model, teacher_data_fp)
    teacher.model.to("cpu")
    for method in cfg.students:
        role = role_of(method, cfg.main)
        parts = method.split("+")
        step, word, uses_extra = parts[0], "word" in parts, "extra" in parts
        kd_task, data_info = task, None
        if step != "word":
            pairs, data_info = training_pairs(task.splits["train"].pairs, outputs, step, cfg.keep_references,
                                              extra if uses_extra else None, task.tokenization)
            kd_task = task.with_train_pairs(pairs)
            extra_text = f", {data_info['extra_pairs']} of them on extra sources" if uses_extra else ""
            pipe.log(f"{role} ({LABELS[method]}): {data_info['pairs']} training pairs from the teacher's outputs "
                     f"({data_info['original_pairs']} references{extra_text})")
        loss = (logit_loss(r.distill, student_cfg.label_smoothing, task=task) if word
                else supervised_loss(student_cfg.label_smoothing, task=task))
        fp = {**ctx.data_fp, "teacher": teacher_fp, "seq_method": method,
              "teacher_precision": r.teacher.precision if word else None,  # sequence-level: decoded in fp32
              "seq_outputs": outputs.fingerprint if step != "word" else None,
              "keep_references": cfg.keep_references if step != "word" else None}
        extra_fp = {"extra_outputs": extra.fingerprint} if uses_extra else {}  # absent otherwise: old stages stay
        fp.update(extra_fp)
        live = pipe.live_teacher(teacher.model, kd_task, channels_last=False) if word else None
        make_teacher = None
        if word and r.teacher.cache:  # offline word-level KD: the teacher's distribution at every target token
            fp["teacher_cache_top_k"] = r.teacher.cache_top_k
            cache_fp = {**teacher_data_fp, "seq_method": method, "seq_outputs": fp["seq_outputs"],
                        "keep_references": fp["keep_references"], **extra_fp}
            make_teacher = (lambda t=kd_task, lv=live, c=cache_fp, m=method:
                            pipe.cached_teacher(t, lv, c, subdir=f"token-logits-{m.replace('+', '_')}"))
        stage = ctx.stages[role] = pipe.stage(role, copy.deepcopy(ctx.student_init), kd_task, student_cfg, loss,
                                              teacher=live, model_cfg=ctx.model_cfg, extra_fp=fp,
                                              make_teacher=make_teacher)
        del live, make_teacher
        labels[role] = LABELS[method]
        if data_info is not None:
            stage.training_extra["seq_kd_data"] = {
                **data_info, "teacher_outputs": outputs.as_dict(),
                **({"extra_outputs": extra.as_dict()} if uses_extra else {})}
    return labels


def teacher_outputs(pipe: StageRunner, task, teacher_model, teacher_data_fp: dict):
    """The teacher's n-best lists on the training sources: from the cache, or decoded now (on the run's device)."""
    cfg = pipe.recipe.distill.seq
    n_best = cfg.n_best or cfg.beam
    fp = fingerprint({"cache": "teacher-seq-outputs", **teacher_data_fp, "teacher": pipe.stage_fp("teacher"),
                      "beam": cfg.beam, "n_best": n_best, "length_penalty": task.length_penalty,
                      "max_len": task.max_len})
    return _decode_once(pipe, task, teacher_model, fp, n_best)


def teacher_extra_outputs(pipe: StageRunner, task, teacher_model, teacher_data_fp: dict):
    """The teacher's best output on every extra source (made up and/or from a file; none from any split), from
    the cache or decoded now. The made-up ones are drawn with the split's seed: they do not change with the run's."""
    cfg = pipe.recipe.distill.seq
    x = cfg.extra_sources
    sources, info, warnings = collect_extra_sources(task, x.count, x.order, x.file, pipe.recipe.split_seed)
    for warning in warnings:
        pipe.log(f"[yellow]note:[/] distill.seq.extra_sources: {warning}")
    digest = hashlib.sha256("\n".join(source_key(s, task.tokenization) for s in sources).encode()).hexdigest()[:16]
    fp = fingerprint({"cache": "teacher-seq-extra", **teacher_data_fp, "teacher": pipe.stage_fp("teacher"),
                      "beam": cfg.beam, "length_penalty": task.length_penalty, "max_len": task.max_len,
                      "sources": digest})
    out = _decode_once(pipe, task, teacher_model, fp, 1, sources)
    out.info = info
    return out


def _decode_once(pipe: StageRunner, task, teacher_model, fp: str, n_best: int, sources=None):
    r = pipe.recipe
    directory = Path(r.teacher.cache_dir) if r.teacher.cache_dir else pipe.run_dir / "teacher_cache"
    model = copy.deepcopy(teacher_model).to(task.device).eval()
    try:
        # under torchrun rank 0 decodes and writes; the others then read its file
        return dist.main_first(lambda: build_or_load_outputs(directory, fp, task, model, r.distill.seq.beam, n_best,
                                                             log=pipe.log, sources=sources))
    finally:
        del model
        if task.device.type == "cuda":
            torch.cuda.empty_cache()


def seq2seq_notes(models: dict) -> list[str]:
    """Kim & Rush's comparisons, from the measured error rates: each KD student greedy against the baseline
    greedy and with beam search, and against the teacher with beam search."""
    def ser(role: str, key: str = "ser"):
        return ((models.get(role) or {}).get("quality") or {}).get(key)

    notes = ["Sequence accuracy = 1 - sequence error rate (a source is right if its greedy output equals one of "
             "its references); 'CPU latency' rows time one teacher-forced forward pass, the 'decoding' rows time "
             "whole greedy / beam-search decodes per sequence."]
    base, base_beam, teacher_beam = ser("baseline"), ser("baseline", "ser_beam"), ser("teacher", "ser_beam")
    parts = []
    for role, entry in models.items():
        if not role.startswith("student") or entry.get("artifact") or ser(role) is None:
            continue
        s = 100 * ser(role)
        text = f"{entry.get('label', role)} greedy {s:.2f}%"
        if base is not None:
            text += f" ({s - 100 * base:+.2f} vs the baseline greedy {100 * base:.2f}%"
            text += f", {s - 100 * base_beam:+.2f} vs its beam search)" if base_beam is not None else ")"
        if teacher_beam is not None:
            text += f", {s - 100 * teacher_beam:+.2f} vs the teacher's beam search {100 * teacher_beam:.2f}%"
        parts.append(text)
    if parts:
        notes.append("Sequence error rates: " + "; ".join(parts) + ". One seed: differences under about one "
                     "point are within seed-to-seed variation.")
    for role, entry in models.items():
        data = ((entry.get("training") or {}).get("seq_kd_data") or {})
        extra = data.get("extra_outputs")
        if extra and data.get("extra_pairs"):
            made = (f"{extra['made_up']} made up by a {extra['order']}-gram model of the training sources"
                    if extra.get("made_up") else "")
            read = f"{extra['from_file']} from a file" if extra.get("from_file") else ""
            notes.append(f"{entry.get('label', role)}: besides the teacher's outputs on the {data['sources']} training "
                         f"sources, it learned the teacher's outputs on {data['extra_pairs']} extra sources without "
                         f"references ({' and '.join(p for p in (made, read) if p)}; none occurs in any split), so "
                         f"each of its epochs holds {data['pairs'] / data['original_pairs']:.2f}x the pairs of the "
                         "baseline's: same epochs, more training steps.")
    return notes
