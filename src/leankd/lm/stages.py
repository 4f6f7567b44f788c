"""The causal_lm kind's own students (`distill.lm.students`), trained after the token-level KD student, each one
ordinary stage (fingerprint, checkpoints, `--resume`, torchrun) with the baseline's initialization and steps:

- `student_seq`: sequence-level KD — cross-entropy on the teacher's continuations of training prompts mixed with the
  real text (seqkd.py);
- `student_on_policy`: on-policy KD (GKD) — the divergence terms of `distill.loss` on batches a share of which the
  student continues itself, the live teacher scoring them (onpolicy.py)."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from ..core import dist
from ..core.fingerprint import fingerprint
from ..errors import RecipeError
from ..io import write_json_atomic
from ..kd.build import logit_loss, supervised_loss
from ..kd.losses import Loss, LossInputs
from ..kd.registry import LOGIT_LOSSES, default_terms
from ..stages import StudentStages
from .onpolicy import UNLABELED, Policy
from .seqkd import build_continuations, continuations

LABELS = {"seq": "seq-KD student", "on_policy": "on-policy KD student"}
ROLES = {"seq": "student_seq", "on_policy": "student_on_policy"}


def train_students(ctx: StudentStages) -> dict[str, str]:
    """Train every `distill.lm.students` method into `ctx.stages`; returns each role's report label."""
    pipe, task, teacher = ctx.runner, ctx.task, ctx.teacher
    r = pipe.recipe
    cfg = r.distill.section("lm")
    student_cfg = r.stage_train("student")
    teacher_fp = pipe.stage_fp("teacher")
    labels = {}
    for method in cfg.students if cfg is not None else []:
        role = ROLES[method]
        if method == "seq":
            fp = fingerprint({"cache": "lm-seq-continuations", **ctx.teacher_data_fp, "teacher": teacher_fp,
                              "prompt_tokens": cfg.prompt_tokens, "prompts": cfg.seq_prompts,
                              "temperature": cfg.seq_temperature, "seed": r.seed})
            directory = Path(r.teacher.cache_dir) if r.teacher.cache_dir else pipe.run_dir / "teacher_cache"
            # the teacher comes to the device only when the continuations are not stored yet
            windows, info = continuations(
                directory, fp, lambda: build_continuations(task, teacher.model.to(task.device), cfg.prompt_tokens,
                                                           cfg.seq_prompts, cfg.seq_temperature, r.seed), log=pipe.log,
                prune=not r.teacher.cache_dir)  # a shared cache_dir keeps one set per fingerprint, as the logits do
            teacher.model.to("cpu")
            kd_task = task.with_extra_blocks(windows)
            pipe.log(f"{role} ({LABELS[method]}): {len(windows)} teacher continuations of {cfg.prompt_tokens}-token "
                     f"prompts beside the {len(task.splits['train'])} text blocks")
            stage = ctx.stages[role] = pipe.stage(
                role, copy.deepcopy(ctx.student_init), kd_task, student_cfg,
                supervised_loss(student_cfg.label_smoothing, task=task), model_cfg=ctx.model_cfg,
                extra_fp={**ctx.data_fp, "teacher": teacher_fp, "lm_method": method, "continuations": fp})
            stage.training_extra["seq_kd_data"] = {**info, "text_blocks": len(task.splits["train"])}
        else:
            model = copy.deepcopy(ctx.student_init)
            policy = Policy(model, cfg.on_policy_fraction, cfg.prompt_tokens, cfg.sample_temperature)
            kd_task = task.with_policy(policy)
            stage = ctx.stages[role] = pipe.stage(
                role, model, kd_task, student_cfg, divergence_loss(r.distill, student_cfg.label_smoothing),
                make_teacher=lambda t=kd_task: pipe.live_teacher(teacher.model, t, channels_last=False),
                model_cfg=ctx.model_cfg,
                extra_fp={**ctx.data_fp, "teacher": teacher_fp, "teacher_precision": r.teacher.precision,
                          "lm_method": method, "on_policy": {"fraction": cfg.on_policy_fraction,
                                                             "prompt_tokens": cfg.prompt_tokens,
                                                             "temperature": cfg.sample_temperature}})
            stats_path = pipe.run_dir / role / "on_policy.json"
            if policy.batches and dist.is_main():  # trained now: what sampling cost, for the reports of later reruns
                write_json_atomic(stats_path, policy.stats())
            dist.barrier()
            if stats_path.is_file():
                stage.training_extra["on_policy"] = json.loads(stats_path.read_text())
        labels[role] = LABELS[method]
    return labels


def divergence_loss(cfg, label_smoothing: float):
    """The distribution-comparing terms of `distill.loss` (or the alpha-mix's KD term), without cross-entropy: an
    on-policy batch's targets are the student's own samples, not labels (GKD trains on the divergence alone)."""
    terms = [t for t in (cfg.loss or default_terms(cfg.alpha)) if LOGIT_LOSSES.get(t.kind).compares_distributions]
    if not terms:
        raise RecipeError("distill.lm.students: on_policy needs a divergence in distill.loss (e.g. forward_kl, "
                          "reverse_kl or jsd) to score the student's samples with")
    return GeneratedRows(logit_loss(cfg.model_copy(update={"loss": terms}), label_smoothing))


class GeneratedRows(Loss):
    """A loss over the rows whose target is not -100 only: an on-policy batch's generated positions (and every
    position of the text's batches). The LM divergences mask such rows themselves; `kd` or `soft_ce` (the alpha-mix)
    would average over the prompt rows too, so the rows are dropped before any term sees them. Named as the loss it
    wraps (the stage fingerprint reads the name)."""

    def __init__(self, inner: Loss):
        super().__init__()
        self.inner = inner
        self.needs_teacher = inner.needs_teacher

    def _kept(self, inputs: LossInputs) -> LossInputs:
        keep = inputs.targets.reshape(-1) != UNLABELED
        if bool(keep.all()):
            return inputs
        top = inputs.teacher_top_k
        return dataclasses.replace(inputs, student=inputs.student[keep], targets=inputs.targets.reshape(-1)[keep],
                                   teacher=None if inputs.teacher is None else inputs.teacher[keep],
                                   teacher_top_k=None if top is None else top.select(keep))

    def compute(self, inputs: LossInputs):
        return self.inner.compute(self._kept(inputs))

    def terms(self, inputs: LossInputs) -> dict:
        return self.inner.terms(self._kept(inputs))

    def describe(self) -> str:
        return self.inner.describe()


def lm_notes(models: dict) -> list[str]:
    """Each extra student against the baseline on the test loss, and what on-policy sampling cost per step."""
    def loss(role: str):
        return ((models.get(role) or {}).get("quality") or {}).get("loss")

    notes = []
    base = loss("baseline")
    for method, role in ROLES.items():
        entry = models.get(role)
        if entry is None or loss(role) is None:
            continue
        text = f"{entry.get('label', LABELS[method])}: test loss {loss(role):.4f} nats/token"
        if base is not None:
            text += f" ({loss(role) - base:+.4f} vs the baseline's {base:.4f})"
        training = entry.get("training") or {}
        data = training.get("seq_kd_data")
        if data:
            text += (f"; trained on {data['sequences']} teacher continuations beside {data['text_blocks']} text "
                     f"blocks, for the baseline's number of steps")
        on = training.get("on_policy")
        if on:
            steps = on.get("batches") or 0
            base_t = ((models.get("baseline") or {}).get("training") or {}).get("wall_time_s")
            own_t = training.get("wall_time_s")
            text += (f"; {on['on_policy_batches']} of {steps} batches were continued by the student itself "
                     f"(λ = {on['fraction']}), sampling took {on['generation_s']:.1f} s"
                     + (f" ({on['generation_s'] / steps:.3f} s per step on average)" if steps else ""))
            epochs = (training.get("epochs") or 0)
            if on.get("epochs_counted") and epochs and on["epochs_counted"] < epochs:
                text += f" (counted over the last {on['epochs_counted']} of {epochs} epochs: the run was resumed)"
            if base_t and own_t:
                text += f"; its training took {own_t / base_t:.2f}x the baseline's time"
        notes.append(text + ".")
    return notes
