"""causal_lm: running text (data.lm) -> next-token prediction; token-level KD with any logit loss (forward_kl,
reverse_kl, jsd, skew_kl, ...), perplexity and bits per character."""
from __future__ import annotations

from ...core.taskkind import TaskKind, register_kind
from .lm_config import LMConfig, LMDistillConfig


def build(cfg, device, seed: int, channels_last: bool):
    from ..causal_lm import build_lm_task

    return build_lm_task(cfg, device, seed, channels_last=channels_last)


def model_defaults(cfg) -> dict:
    """What `leankd validate` builds models with before any text is read."""
    return {"context": cfg.lm.context if cfg.lm is not None else LMConfig().context}


def check(recipe) -> None:
    """Refuse what this kind cannot run; a distillation temperature left unset is 1, the language-model convention
    (TRL, DistiLLM, MiniLLM distil at T = 1; the classification default 4 flattens a 50k-token distribution into
    noise). Written into the resolved recipe, so leaving it out and writing 1 are the same run."""
    if "temperature" not in recipe.distill.model_fields_set:
        object.__setattr__(recipe.distill, "temperature", 1.0)  # not `=`: validate_assignment would recurse
        recipe.distill.model_fields_set.add("temperature")
    lm = recipe.distill.section("lm")
    if lm is not None and lm.students:
        context = recipe.data.lm.context
        if lm.prompt_tokens >= context:
            raise ValueError(f"distill.lm.prompt_tokens = {lm.prompt_tokens} leaves nothing to generate in a block of "
                             f"data.lm.context = {context} tokens: lower it (e.g. {max(1, context // 4)})")
        if "on_policy" in lm.students:
            from ...lm.stages import divergence_loss

            divergence_loss(recipe.distill, 0.0)  # no divergence term: an error now, not after the teacher trained
    if recipe.distill.assistants:
        raise ValueError("distill.assistants (progressive distillation) is not supported for causal_lm yet: remove it")
    if recipe.teacher.limit_train is not None:
        raise ValueError("teacher.limit_train is not supported for causal_lm: use data.limit_train (every stage) or "
                         "remove it")
    if recipe.distill.features:
        raise ValueError("distill.features (layer losses) are not supported for causal_lm yet: remove them (token-level "
                         "KD is distill.loss, e.g. [{kind: forward_kl}, {kind: ce}])")


def check_source(cfg) -> list[str]:
    """The source must exist and hold text (a missing optional package is reported, not an error)."""
    from ...data.lm import refuse_demo
    from ...validate import missing_source

    refuse_demo(cfg.source)
    return missing_source(str(cfg.source))


def student_stages(ctx) -> dict[str, str]:
    """Sequence-level and on-policy KD students (`distill.lm.students`), after the token-level KD student."""
    from ...lm.stages import train_students

    return train_students(ctx)


def report_notes(models: dict) -> list[str]:
    from ...lm.stages import lm_notes

    return lm_notes(models)


KIND = register_kind(TaskKind(
    "causal_lm", build, model_defaults=model_defaults, check=check, check_source=check_source,
    data_sections={"lm": LMConfig}, distill_sections={"lm": LMDistillConfig},
    student_stages=student_stages, report_notes=report_notes,
    refusals={"augment": "a causal_lm task trains on its text as it is", "text": "causal_lm text settings are data.lm",
              "seq": "causal_lm text settings are data.lm"},
    summary="running text (data.lm) -> next token; loss in nats/token, perplexity, bits per character"))
