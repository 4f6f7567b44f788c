"""A run over several seeds, in words and tables: the KD student paired with the baseline seed by seed (mean
difference, t interval, tests), and the per-seed quality table. Split from `markdown` (issue 24); the KD verdict
(`verdict`) and the console caption (`console`) use the same paired statistics."""
from __future__ import annotations

from typing import Optional

from leankd.report.base import DEFAULT_LABELS, STUDENT_ROLE
from leankd.report.figures import seeds_primary
from leankd.report.format import (
    ACCURACY_LIKE,
    CORRELATIONS,
    DASH,
    RAW_METRICS,
    _fmt_metric,
    _fmt_p,
    _g,
    _is_num,
    _md_table,
    _primary_label,
    fmt_fixed,
    fmt_pct,
    fmt_points,
    fmt_value,
    model_label,
)


# ------------------------------------------------------------------------------------------------- seeds
def _paired_seeds(report: dict) -> Optional[dict]:
    """The KD student's paired comparison with the baseline over two or more seeds, if the run has one."""
    paired = _g(report, "seeds", "paired", STUDENT_ROLE)
    return paired if paired and paired.get("n", 0) >= 2 and _is_num(paired.get("mean_points")) else None


def _paired_stats(p: dict, higher_is_better: bool = True) -> str:
    """'mean paired difference +1.00 points over 3 seeds, 95 % CI [-1.48, +3.48], paired t-test p = 0.225; ...'
    (for a lower-is-better metric the differences are baseline minus KD, and the text says + = KD better)."""
    parts = [f"mean paired difference {fmt_points(p['mean_points'])} points over {p['n']} seeds"
             + ("" if higher_is_better else ", baseline minus KD student as lower is better")]
    if _is_num(p.get("ci_low_points")) and _is_num(p.get("ci_high_points")):
        parts[0] += (f", {100 * p['ci_level']:g} % CI [{fmt_points(p['ci_low_points'])}, "
                     f"{fmt_points(p['ci_high_points'])}]")
    if _is_num(p.get("p_value")):
        parts[0] += f", paired t-test p {_fmt_p(p['p_value'])}"
    ties = f", tied in {p['ties']}" if p.get("ties") else ""
    parts.append(f"KD better in {p['better']} of {p['n']} seeds, worse in {p['worse']}{ties}")
    return "; ".join(parts)


def seeds_kd_sentence(report: dict, s_label: str, budget: str) -> Optional[str]:
    """The KD verdict over seeds: the mean paired difference and its t interval; an interval that contains 0 is
    'within seed spread', whatever the sign of the mean."""
    p = _paired_seeds(report)
    if p is None:
        return None
    metric = seeds_primary(report)
    name, higher = metric["name"], metric["higher_is_better"]
    mean, lo, hi = p["mean_points"], p.get("ci_low_points"), p.get("ci_high_points")
    if _is_num(lo) and lo == hi and not (_is_num(p.get("sign_p_value")) and p["sign_p_value"] < 0.05):
        lo = hi = None  # every seed gave the same difference: a zero-width interval, not certainty (sign test decides)
    # accuracy (Pearson r) keeps its above / below wording; another metric is named with its direction, and the
    # paired differences are signed + = KD better whatever that direction
    on = "" if name in ACCURACY_LIKE else f" on {_primary_label(metric)}"
    if not (_is_num(lo) and _is_num(hi)) or lo <= 0 <= hi:
        verdict = f"{s_label} is within seed spread of the baseline trained alone{on} {budget}"
    elif name in ACCURACY_LIKE:
        verdict = (f"{s_label} is {abs(mean):.2f} points {'above' if mean > 0 else 'below'} the baseline trained "
                   f"alone {budget}")
    else:
        verdict = (f"{s_label} is {abs(mean):.2f} points {'better' if mean > 0 else 'worse'} than the baseline "
                   f"trained alone{on} {budget}")
    roles = _g(report, "seeds", "roles") or {}
    s_mean, b_mean = _g(roles, STUDENT_ROLE, "mean"), _g(roles, p["reference"], "mean")
    if name == "accuracy":
        values = f"{fmt_pct(s_mean)} % vs {fmt_pct(b_mean)} % mean accuracy"
    elif name == "pearson":
        values = f"{fmt_pct(s_mean)} % vs {fmt_pct(b_mean)} % mean Pearson r (x100)"
    else:
        values = f"mean {_fmt_metric(name, s_mean)} vs {_fmt_metric(name, b_mean)}"
    return f"{verdict} ({_paired_stats(p, higher)}): {values}."


def seeds_tables(report: dict) -> list[str]:
    """Markdown of a run over seeds: quality per seed with mean ± sd, and each KD student paired with the baseline."""
    seeds = report.get("seeds")
    if not seeds:
        return []
    models = report["models"]

    def label(role: str) -> str:
        return model_label(role, models[role]) if role in models else DEFAULT_LABELS.get(role, role)

    primary = seeds_primary(report)
    metric = _seeds_heading(primary)
    header = ["model", f"{metric} mean ± sd"] + [f"seed {s}" + (" (main)" if s == seeds["main_seed"] else "")
                                                  for s in seeds["seeds"]]
    name = primary["name"]
    rows = [[label(role), f"{fmt_value(name, st.get('mean'))} ± {fmt_value(name, st.get('sd'))}"]
            + [fmt_value(name, v) for v in st["values"]] for role, st in seeds["roles"].items()]
    for role, p in seeds.get("paired", {}).items():
        if p["n"] == len(seeds["seeds"]):  # one difference per seed: a row under the values it came from
            # + = KD better: KD minus baseline, or baseline minus KD where lower is better (an error rate)
            first, second = (role, p["reference"]) if primary["higher_is_better"] else (p["reference"], role)
            rows.append([f"{label(first)} − {label(second)} (points)",
                         f"{fmt_points(p.get('mean_points'))} ± {fmt_points(p.get('sd_points'), signed=False)}"]
                        + [fmt_points(d) for d in p["differences_points"]])
    lines = _md_table(header, rows)
    paired = seeds.get("paired") or {}
    if paired:
        level = f"{100 * next(iter(paired.values()))['ci_level']:g} % CI (t)"
        prow = []
        for role, p in paired.items():
            t = (f"{fmt_fixed(p.get('t'), 2)} ({p.get('df')}), p {_fmt_p(p['p_value'])}"
                 if _is_num(p.get("t")) and _is_num(p.get("p_value")) else DASH)
            ci = (f"[{fmt_points(p.get('ci_low_points'))}, {fmt_points(p.get('ci_high_points'))}]"
                  if _is_num(p.get("ci_low_points")) else DASH)
            sign = _fmt_p(p["sign_p_value"]).lstrip("= ") if _is_num(p.get("sign_p_value")) else DASH
            prow.append([f"{label(role)} vs {label(p['reference'])}", fmt_points(p.get("mean_points")), ci, t,
                         f"{p['better']} / {p['worse']} / {p['ties']}", sign])
        lines += [""] + _md_table(["paired over seeds", "mean Δ (points, + = KD better)", level, "paired t (df), p",
                                   "better / worse / tied", "sign test p"], prow)
    if seeds.get("note"):
        lines += ["", seeds["note"]]
    return lines


def _seeds_heading(primary: dict) -> str:
    """The seeds table's metric column: accuracy (%), Pearson r (x100), or the primary metric with its direction."""
    name = primary["name"]
    if name == "accuracy":
        return "accuracy (%)"
    if name == "pearson" and primary.get("label") in (None, "Pearson r"):
        return "Pearson r (x100)"
    unit = "x100, " if name in CORRELATIONS else "" if name in RAW_METRICS else "%, "
    return f"{primary.get('label') or name} ({unit}{'higher' if primary['higher_is_better'] else 'lower'} is better)"

