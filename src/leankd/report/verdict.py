"""The KD verdict: whether the KD student beat the baseline trained alone, derived from the sign and size of the
gain, the eval noise, the seeds and the training budgets. When the classic accuracy verdict would mislead (models at
chance, a primary metric other than accuracy) the sanity verdict replaces it. Split from `markdown` (issue 24): every
sentence that states the result lives here, for `report.md` and the console caption alike."""
from __future__ import annotations

import math
from typing import Optional

from leankd.report.base import BASELINE_ROLE, STUDENT_ROLE, TEACHER_ROLE
from leankd.report.figures import seeds_primary
from leankd.report.format import (
    ACCURACY_LIKE,
    _fmt_metric,
    _g,
    _headline,
    _is_num,
    _primary,
    _primary_label,
    _regression,
    fmt_fixed,
    fmt_int,
    fmt_pct,
    fmt_points,
    model_label,
)
from leankd.report.seeds_text import _paired_seeds, _paired_stats, seeds_kd_sentence

KD_TIE_POINTS = 0.1  # |gain| below this is reported as "within 0.1 points of"
SECONDARY_LABELS = {"fa_fr_auc": "FA/FR AUC (lower is better)", "ter": "token error rate (lower is better)",
                    "bpc": "bits per character"}


# ------------------------------------------------------------------------------------------------- KD gain
def _budget(models: dict) -> str:
    """How the KD student's training budget compares with the baseline's, as the verdicts word it."""
    s_ep, b_ep = _g(models, STUDENT_ROLE, "training", "epochs"), _g(models, BASELINE_ROLE, "training", "epochs")
    transfer = _g(models, STUDENT_ROLE, "training", "transfer_set")
    if transfer and s_ep is not None and s_ep == b_ep:  # augmentation: same epochs, more examples per epoch
        seen = transfer["original"] + transfer["augmented"]
        return (f"with the same {s_ep} epochs, but each KD epoch covers {fmt_int(seen)} texts ({transfer['augmented']:,}"
                f" augmented) against the baseline's {fmt_int(transfer['original'])}: "
                f"{seen / transfer['original']:.1f}x its steps")
    if s_ep is not None and s_ep == b_ep:
        return f"with the same budget ({s_ep} epochs)"
    if s_ep is not None and b_ep is not None:
        return f"(note: different budgets, {s_ep} vs {b_ep} epochs, so this is not like-for-like)"
    return "(training budgets not recorded)"


def kd_gain_sentence(report: dict) -> str:
    """The KD verdict, derived from the sign and size of `ratios.kd_gain_points`."""
    models = report["models"]
    gain = _g(report, "ratios", "kd_gain_points")
    s_label = model_label(STUDENT_ROLE, models[STUDENT_ROLE]) if STUDENT_ROLE in models else "KD student"
    if not _is_num(gain):
        missing = [r for r in (BASELINE_ROLE, STUDENT_ROLE) if r in models and _headline(models[r]) is None]
        why = f"no quality figure for {', '.join(missing)}" if missing else "not computed"
        return f"KD gain over the baseline: not available ({why})."

    budget = _budget(models)
    seeded = seeds_kd_sentence(report, s_label, budget)
    if seeded:
        return seeded
    if abs(gain) < KD_TIE_POINTS:
        verdict = f"{s_label} is within {KD_TIE_POINTS:g} points of the baseline trained alone {budget}"
    elif gain > 0:
        verdict = f"{s_label} is {abs(gain):.2f} points above the baseline trained alone {budget}"
    else:
        verdict = f"{s_label} is {abs(gain):.2f} points below the baseline trained alone {budget}"
    s_acc, b_acc = _headline(models[STUDENT_ROLE]), _headline(models[BASELINE_ROLE])
    if _regression(report):
        return f"{verdict}: Pearson r {fmt_fixed(s_acc, 4)} vs {fmt_fixed(b_acc, 4)} ({fmt_points(gain)} points x 1/100)."
    return f"{verdict}: {fmt_pct(s_acc)} % vs {fmt_pct(b_acc)} % accuracy ({fmt_points(gain)} points)."


def _kd_noise_sentence(report: dict) -> Optional[str]:
    """Rough scale of eval noise: standard error of the accuracy difference, treating the two as independent."""
    if _paired_seeds(report):
        return None  # the seeds' confidence interval covers eval noise and seed spread together
    models = report["models"]
    gain = _g(report, "ratios", "kd_gain_points")
    s_acc, b_acc = _g(models, STUDENT_ROLE, "quality", "accuracy"), _g(models, BASELINE_ROLE, "quality", "accuracy")
    n_s = _g(models, STUDENT_ROLE, "quality", "num_samples") or _g(report, "run", "dataset", "eval_size")
    n_b = _g(models, BASELINE_ROLE, "quality", "num_samples") or _g(report, "run", "dataset", "eval_size")
    if not all(_is_num(v) for v in (gain, s_acc, b_acc, n_s, n_b)) or n_s <= 0 or n_b <= 0:
        return None
    if not (0 <= s_acc <= 1 and 0 <= b_acc <= 1):
        return None
    se = 100.0 * math.sqrt(s_acc * (1 - s_acc) / n_s + b_acc * (1 - b_acc) / n_b)
    if se <= 0:
        return None
    within = abs(gain) < 2 * se
    return (
        f"For scale: with {fmt_int(n_s)} eval samples, one standard error of this difference is about "
        f"{se:.2f} points (rough binomial estimate), so this gap is "
        + ("within noise (under 2 standard errors)." if within else "larger than 2 standard errors.")
    )


def _seed_caveat(report: dict) -> Optional[str]:
    if _paired_seeds(report):
        return None
    seed = _g(report, "run", "seed")
    if isinstance(seed, list) and len(seed) > 1:
        return None
    shown = f" (seed {seed})" if seed is not None else ""
    return f"Measured on one seed{shown}: repeat with other seeds before relying on a difference of this size."


# ------------------------------------------------------------------------------------------------- sanity
# Results that cannot be right (report.sanity) and a primary metric other than accuracy: when the classic verdict
# would mislead, these replace it.
def _flagged(models: dict, roles: tuple) -> list[str]:
    return [r for r in roles if r in models and models[r].get("quality_flags")]


def sanity_kd_paragraph(report: dict) -> Optional[str]:
    """The KD verdict when the classic one would mislead, else None: a comparison between models at chance is
    called meaningless (with why), and a task whose primary metric is not accuracy is judged on that metric."""
    models = report["models"]
    if BASELINE_ROLE not in models or STUDENT_ROLE not in models:
        return None
    broken = _flagged(models, (TEACHER_ROLE, BASELINE_ROLE, STUDENT_ROLE))
    if broken:
        kinds = {r: ", ".join(f["kind"].replace("_", " ") for f in models[r]["quality_flags"]) for r in broken}
        who = "; ".join(f"{model_label(r, models[r])}: {kinds[r]}" for r in broken)
        why = ("the teacher has nothing to teach, so the students' difference says nothing about distillation"
               if broken == [TEACHER_ROLE] else
               "a difference involving a model that learned nothing measures noise, not distillation")
        return (f"KD gain over the baseline: not meaningful ({who}): {why}, so the accuracy gap "
                f"({fmt_points(_g(report, 'ratios', 'kd_gain_points'))} points) is not a result. Fix the cause listed "
                "under \"Results that cannot be right\" and run again before reading any gain.")
    primary = _primary(report)
    if not primary or primary.get("name") in ACCURACY_LIKE:
        return None
    name, gain = primary["name"], _g(report, "ratios", "kd_gain_primary_points")
    s_val, b_val = _g(models, STUDENT_ROLE, "quality", name), _g(models, BASELINE_ROLE, "quality", name)
    s_label = model_label(STUDENT_ROLE, models[STUDENT_ROLE])
    # the seeds block pairs this very metric over two or more seeds: that is the verdict, the main seed a detail
    seeded = _paired_seeds(report) is not None and _g(report, "seeds", "metric") == name
    if seeded:
        parts = [seeds_kd_sentence(report, s_label, _budget(models)),
                 f"Main seed ({_g(report, 'seeds', 'main_seed')}): {_fmt_metric(name, s_val)} vs "
                 f"{_fmt_metric(name, b_val)}."]
    elif not _is_num(gain):
        return (f"KD gain over the baseline on the primary metric, {_primary_label(primary)}: not available (not "
                "measured).")
    else:
        if abs(gain) < KD_TIE_POINTS:
            verdict = f"{s_label} is within {KD_TIE_POINTS:g} points of the baseline trained alone"
        else:
            verdict = (f"{s_label} is {abs(gain):.2f} points {'better' if gain > 0 else 'worse'} than the baseline "
                       "trained alone")
        parts = [f"{verdict} on the task's primary metric, {_primary_label(primary)}: {_fmt_metric(name, s_val)} vs "
                 f"{_fmt_metric(name, b_val)}."]
    if report.get("seeds") and not seeded:  # an older seeds block pairs accuracy: this verdict is one seed's
        other = seeds_primary(report)
        parts.append(f"This is the main seed ({_g(report, 'seeds', 'main_seed')}) only: the Seeds section pairs "
                     f"{other['label'] if other else 'accuracy'} over the seeds, not this metric, so repeat the "
                     "comparison per seed before relying on a difference of this size.")
    for other in primary.get("also") or []:
        s_other, b_other = _g(models, STUDENT_ROLE, "quality", other), _g(models, BASELINE_ROLE, "quality", other)
        parts.append(f"{SECONDARY_LABELS.get(other, other)}: {_fmt_metric(other, s_other)} vs "
                     f"{_fmt_metric(other, b_other)}.")
    acc = _g(report, "ratios", "kd_gain_points")
    if (_is_num(acc) and _is_num(gain) and abs(acc) >= KD_TIE_POINTS and abs(gain) >= KD_TIE_POINTS
            and (acc > 0) != (gain > 0)):
        at = " at the main seed" if seeded else ""
        parts.append(f"Accuracy{at} ({fmt_points(acc)} points) points the other way, but it is not what this task "
                     "is judged by.")
    s_ep, b_ep = _g(models, STUDENT_ROLE, "training", "epochs"), _g(models, BASELINE_ROLE, "training", "epochs")
    if s_ep is not None and b_ep is not None and s_ep != b_ep and not seeded:  # the seeds verdict says it
        parts.append(f"Note: different budgets ({s_ep} vs {b_ep} epochs), so this is not like-for-like.")
    seed = _seed_caveat(report)
    return " ".join(parts + ([seed] if seed else []))


def sanity_console_caption(report: dict) -> Optional[str]:
    """The console table's caption when the accuracy gain would mislead (models at chance, another primary metric)."""
    models = report["models"]
    if _flagged(models, (TEACHER_ROLE, BASELINE_ROLE, STUDENT_ROLE)):
        return "KD gain: not meaningful (a model is at chance or collapsed; see report.md)"
    primary, gain = _primary(report), _g(report, "ratios", "kd_gain_primary_points")
    if not primary or primary.get("name") in ACCURACY_LIKE:
        return None
    paired = _paired_seeds(report)
    if paired is not None and _g(report, "seeds", "metric") == primary["name"]:
        return f"KD gain over baseline on {_primary_label(primary)}, + = better: {_paired_stats(paired)}"
    if _is_num(gain):
        return f"KD gain over baseline on {_primary_label(primary)}: {fmt_points(gain)} points, + = better (one seed)"
    return None

