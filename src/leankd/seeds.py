"""Statistics of a run over several seeds (`seeds:` in a recipe): mean and spread of each model's primary metric,
and the paired comparison of a KD student with the baseline trained alone (+ = KD better, whatever the direction).

Why paired: every seed trains the baseline and the KD student from the same initial weights on the same split, so
seed-to-seed variation (initialization, batch order) is shared by the two; the per-seed differences cancel it and
are what a KD claim should be tested on. With a handful of seeds the Student t distribution matters (t(0.975, 2) is
4.30, not 1.96); its CDF has a closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), so no
scipy is needed.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence


def mean_sd(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1 denominator; None for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_within(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer `df` >= 1 (closed form, Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    t = abs(t)
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):  # 1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... up to c^(df-3)
            term *= (2 * k) / (2 * k + 1) * c2
            total += term
        return min(1.0, 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total))
    term, total = 1.0, 1.0
    for k in range(1, df // 2):  # 1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return min(1.0, math.sin(theta) * total)


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of a t statistic."""
    return max(0.0, 1.0 - t_within(t, df))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = `level` (0.95 gives the 97.5 % quantile), by bisection on the exact CDF."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_within(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_within(mid, df) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def sign_test_p(better: int, worse: int) -> float:
    """Exact two-sided sign test (ties dropped): the chance of a split at least this uneven under a fair coin."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    return min(1.0, 2 * math.fsum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_comparison(values: Sequence[float], reference: Sequence[float], level: float = 0.95,
                      higher_is_better: bool = True) -> dict:
    """`values` against `reference`, seed by seed, in points (x100 of the fractions given): the differences, their
    mean and sd, the `level` t confidence interval of the mean, the paired t-test and the sign count. The differences
    are signed so that + means `values` is better: `values - reference`, or `reference - values` for a metric where
    lower is better (an error rate)."""
    if len(values) != len(reference):
        raise ValueError(f"paired comparison needs one value per seed on both sides, got {len(values)} and "
                         f"{len(reference)}")
    sign = 1.0 if higher_is_better else -1.0
    # rounded to 1e-4 points before anything is computed from them: float noise (1e-15) is neither a win nor spread
    # (two equal gains would otherwise get a t of 1e14), and the report's statistics follow from its differences;
    # + 0.0 turns a negated zero into 0.0
    shown = [round(sign * 100.0 * (v - r), 4) + 0.0 for v, r in zip(values, reference)]
    n = len(shown)
    mean, sd = mean_sd(shown)
    out = {"differences_points": shown, "n": n,
           "mean_points": None if mean is None else round(mean, 4), "sd_points": None if sd is None else round(sd, 4),
           "ci_level": level, "ci_low_points": None, "ci_high_points": None, "t": None, "df": n - 1 if n > 1 else None,
           "p_value": None,
           "better": sum(d > 0 for d in shown), "worse": sum(d < 0 for d in shown), "ties": sum(d == 0 for d in shown)}
    out["sign_p_value"] = round(sign_test_p(out["better"], out["worse"]), 6)
    if sd is None:
        return out
    se = sd / math.sqrt(n)
    half = t_quantile(level, n - 1) * se
    out["ci_low_points"], out["ci_high_points"] = round(mean - half, 4), round(mean + half, 4)
    if sd > 0:
        t = mean / se
        out["t"], out["p_value"] = round(t, 4), round(t_two_sided_p(t, n - 1), 6)
    return out


def seeds_summary(seeds: Sequence[int], values: dict[str, list[Optional[float]]], *, main_seed: int, split_seed: int,
                  metric: str, teacher: str, reference: str = "baseline", compared: Sequence[str] = (),
                  note: Optional[str] = None, higher_is_better: bool = True, label: Optional[str] = None) -> dict:
    """The report's `seeds` block: per role its value of `metric` (the task's primary metric) per seed (aligned with
    `seeds`), mean and sd; and each role in `compared` paired with `reference` over the seeds where both were
    measured, + = better whatever the metric's direction (`higher_is_better`; `label`: how the report names it)."""
    roles = {}
    for role, vals in values.items():
        known = [v for v in vals if v is not None]
        mean, sd = mean_sd(known)
        roles[role] = {"values": list(vals), "n": len(known), "mean": None if mean is None else round(mean, 6),
                       "sd": None if sd is None else round(sd, 6)}
    paired = {}
    for role in compared:
        if role not in values or reference not in values:
            continue
        pairs = [(v, r) for v, r in zip(values[role], values[reference]) if v is not None and r is not None]
        if pairs:
            paired[role] = {"reference": reference,
                            **paired_comparison([v for v, _ in pairs], [r for _, r in pairs],
                                                higher_is_better=higher_is_better)}
    return {"seeds": list(seeds), "main_seed": main_seed, "split_seed": split_seed, "metric": metric,
            "higher_is_better": higher_is_better, "label": label, "teacher": teacher, "roles": roles,
            "paired": paired, "note": note}
