"""Results that cannot be right: a model at chance or collapsed onto one class is flagged in the report with the
likely causes the run's own data shows, so a report never reads a distillation "gain" between two broken models
as a finding.

Everything here reads measured numbers only (the quality block, the model probe of `measure.probe`, the training
block and the per-epoch history in `metrics.jsonl`), so it works on any task whose quality block has them.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

CHANCE_SE = 2.0  # at chance: accuracy <= chance level + this many binomial standard errors
COLLAPSE_SHARE = 0.9  # collapsed: one class takes at least this share of predictions (see `_collapsed`)
MIN_STEPS_WITH_BN = 300  # fewer optimizer steps than this with BatchNorm layers: a likely cause
RANDOM_FA_FR_AUC = 0.45  # binary detection: an FA/FR AUC at or above this ranks keywords about as well as a coin


def _num(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def chance_level(quality: dict, num_classes: Optional[int]) -> Optional[float]:
    """What a model that learned nothing scores: 1/C, or the majority class's share when that is larger
    (a 90 %-'other' keyword split is 90 % accuracy for a model that always answers 'other')."""
    levels = [v for v in (1.0 / num_classes if num_classes and num_classes >= 2 else None,
                          _num(quality.get("majority_class_share"))) if v is not None]
    return max(levels) if levels else None


def _at_chance(quality: dict, num_classes: Optional[int], n: Optional[int]) -> Optional[str]:
    acc, chance = _num(quality.get("accuracy")), chance_level(quality, num_classes)
    classification = quality.get("macro_f1") is not None  # seq2seq's sequence accuracy has no per-class chance
    if classification and acc is not None and chance is not None and n:
        bound = chance + CHANCE_SE * math.sqrt(chance * (1 - chance) / n)
        if acc <= bound:
            level = (f"1/{num_classes} for {num_classes} classes" if num_classes and chance <= 1.0 / num_classes
                     else "always answering the largest class")
            return (f"accuracy {100 * acc:.2f}% is at chance level: a model that learned nothing scores "
                    f"{100 * chance:.2f}% here ({level}), and anything up to {100 * bound:.2f}% is within "
                    f"{CHANCE_SE:g} binomial standard errors of it on {n:,} examples")
    auc = _num(quality.get("fa_fr_auc"))
    if auc is not None and auc >= RANDOM_FA_FR_AUC:
        return (f"FA/FR AUC {auc:.3f} is at chance level (a random score gives 0.5): the model ranks keyword clips "
                "no better than a coin")
    return None


def _collapsed(quality: dict) -> Optional[str]:
    """One class takes nearly every prediction (more than the data's largest class accounts for), or macro-F1 is
    under half the accuracy (a few classes take the predictions)."""
    share, majority = _num(quality.get("top_prediction_share")), _num(quality.get("majority_class_share")) or 0.0
    if share is not None and share >= max(COLLAPSE_SHARE, (1 + majority) / 2):
        return (f"predictions collapse onto one class: it takes {100 * share:.1f}% of all predictions, while the "
                f"largest class is {100 * majority:.1f}% of the examples")
    acc, f1 = _num(quality.get("accuracy")), _num(quality.get("macro_f1"))
    if acc is not None and f1 is not None and acc > 0 and f1 < 0.5 * acc:
        return (f"macro-F1 {100 * f1:.2f}% is under half the accuracy {100 * acc:.2f}%: a few classes take almost "
                "all predictions")
    return None


def read_history(run_dir: Optional[Path], entry: dict) -> list[dict]:
    """The per-epoch rows of a model's `metrics.jsonl` ([] when absent or unreadable: the causes just say less)."""
    rel = entry.get("history")
    if run_dir is None or not rel:
        return []
    try:
        return [json.loads(line) for line in (Path(run_dir) / rel).read_text(encoding="utf-8").splitlines()
                if line.strip()]
    except (OSError, ValueError):
        return []


def _steps(training: dict, history: list[dict]) -> Optional[int]:
    steps = training.get("steps")
    if isinstance(steps, int):
        return steps
    batch = training.get("batch_size")
    if not batch or not history:
        return None
    seen = [(_num(r.get("samples_per_s")) or 0) * (_num(r.get("epoch_time_s")) or 0) for r in history]
    return int(sum(max(1, round(s / batch)) for s in seen))


def likely_causes(entry: dict, history: list[dict]) -> list[str]:
    """Causes of a broken result that the run's data can show; empty when none of them is visible."""
    causes = []
    probe, training = entry.get("probe") or {}, entry.get("training") or {}
    size, stride = probe.get("input_size"), probe.get("total_stride")
    if size and stride and min(size) < stride:
        feat = probe.get("feature_size") or []
        causes.append(f"the input ({size[0]}x{size[1]}) is smaller than the model's total stride ({stride}): its last "
                      f"feature map is {'x'.join(str(f) for f in feat) or 'collapsed'}, so the last stages see no "
                      f"spatial structure. Resize the inputs (e.g. data.image_size: {max(4 * stride, 64)}) or use a "
                      "model made for inputs this small")
    bn = probe.get("batchnorm_layers")
    steps = _steps(training, history)
    if steps is not None and steps < MIN_STEPS_WITH_BN and (bn is None or bn > 0):
        what = (f" with {bn} BatchNorm layers: weights and BatchNorm running statistics (momentum 0.1) have" if bn
                else ": the weights may have")
        causes.append(f"only {steps} optimizer steps{what} barely moved from their start; train for more steps (more "
                      "epochs, or a smaller batch)")
    losses = [r.get("train_loss") for r in history if "train_loss" in r]
    bad = next((i for i, v in enumerate(losses) if v is None or not math.isfinite(float(v))), None)
    lr = _num(history[0].get("lr")) if history else None
    lr_text = f" (lr {lr:g} at the end of epoch 1)" if lr is not None else ""
    if bad is not None:
        causes.append(f"the training loss became {losses[bad]} at epoch {bad + 1}: training diverged; lower the "
                      f"learning rate{lr_text}")
    elif len(losses) >= 2 and losses[-1] > losses[0]:
        causes.append(f"the training loss rose from {losses[0]:.4g} (epoch 1) to {losses[-1]:.4g} (epoch "
                      f"{len(losses)}): the learning rate{lr_text} is probably too high")
    return causes


def quality_flags(entry: dict, dataset: dict, history: list[dict]) -> list[dict]:
    """`report.schema.QualityFlag`s of one model entry: at chance and/or collapsed, each with its likely causes."""
    quality = entry.get("quality") or {}
    n = quality.get("num_samples") or dataset.get("eval_size")
    found = [(kind, msg) for kind, msg in (("at_chance", _at_chance(quality, dataset.get("num_classes"), n)),
                                           ("collapsed", _collapsed(quality))) if msg]
    if not found:
        return []
    causes = likely_causes(entry, history)
    return [{"kind": kind, "message": msg, "causes": causes} for kind, msg in found]


STEPS_CAUSE = re.compile(r"only \d+ optimizer steps")  # how the step-count cause begins (`likely_causes`)


def _healthy_peer(role: str, models: dict, flagged: set[str]) -> Optional[tuple[str, dict]]:
    """A model of the same run that trained for no more optimizer steps than `role` and is not flagged: it shows the
    step count cannot be what broke `role`. The one with the most steps (the closest budget) is named."""
    steps = (models[role].get("training") or {}).get("steps")
    if not isinstance(steps, int):
        return None
    peers = [(other, e) for other, e in models.items() if other != role and other not in flagged
             and isinstance((e.get("training") or {}).get("steps"), int) and e["training"]["steps"] <= steps]
    return max(peers, key=lambda p: p[1]["training"]["steps"], default=None)


def _loss_cause(entry: dict, peer_role: str, peer: dict) -> str:
    """What differs when a peer with the same budget learned: the loss (e.g. DKD's beta x T^2 = 128 weight on its
    non-target term swamping the label term of a 10-epoch run), not the step count."""
    steps, peer_steps = entry["training"]["steps"], peer["training"]["steps"]
    acc = _num((peer.get("quality") or {}).get("accuracy"))
    reached = f" reaches {100 * acc:.2f}%" if acc is not None else " is not at chance"
    loss, peer_loss = (entry.get("training") or {}).get("loss"), (peer.get("training") or {}).get("loss")
    differs = (f"; what differs is the loss: `{loss}` here, `{peer_loss}` there" if loss and loss != peer_loss
               else "")
    return (f"{peer.get('label') or peer_role} trained for {peer_steps} optimizer steps (this model: {steps}) and"
            f"{reached}, so too few steps is not the cause{differs}. A distillation term weighted far above the "
            "label term can drive a short run away: lower its weight or the learning rate, or warm it up for longer")


def add_quality_flags(models: dict, dataset: dict, run_dir: Optional[Path]) -> None:
    """Set `quality_flags` on every model entry whose result cannot be right (in place; others are left alone).
    A step-count cause is checked against the rest of the run: when a model of the same run with no more steps
    learned, the cause named is the difference between the two (the loss), not the step count."""
    found = {role: quality_flags(entry, dataset, read_history(run_dir, entry)) for role, entry in models.items()}
    flagged = {role for role, flags in found.items() if flags}
    for role in flagged:
        peer = _healthy_peer(role, models, flagged)
        for flag in found[role]:
            if peer is not None:
                flag["causes"] = [_loss_cause(models[role], *peer) if STEPS_CAUSE.match(c)
                                  else c for c in flag["causes"]]
        models[role]["quality_flags"] = found[role]
