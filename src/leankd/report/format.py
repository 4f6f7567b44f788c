"""How report figures are written, shared by `report.md`, the console tables and `leankd compare`: cell formatters
(a missing figure is always "—"), the markdown table, model labels, the noisy-timing mark, and how the task's primary
metric is named. Split from `markdown` (issue 24) so that every renderer formats a number the same way."""
from __future__ import annotations

import math
from typing import Any, Optional

from leankd.report.base import DEFAULT_LABELS

DASH = "—"
TIMES = "×"


# ------------------------------------------------------------------------------------------------- formatting
def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt_fixed(x: Any, decimals: int = 2) -> str:
    if not _is_num(x):
        return DASH
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:,.{decimals}f}"


def fmt_int(x: Any) -> str:
    if not _is_num(x):
        return DASH
    return f"{int(round(x)):,}"


def fmt_auto(x: Any) -> str:
    """Sensible precision for magnitudes that range widely (MB, millions of MACs, seconds)."""
    if not _is_num(x):
        return DASH
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01 or a == 0:
        return f"{x:.2f}"
    return f"{x:.2g}"


def fmt_pct(x: Any) -> str:
    """A fraction in [0, 1] shown as percent with 2 decimals."""
    return fmt_fixed(x * 100.0, 2) if _is_num(x) else DASH


def fmt_millions(x: Any) -> str:
    return fmt_auto(x / 1e6) if _is_num(x) else DASH


def fmt_si(x: Any, unit: str = "") -> str:
    """A count with an SI prefix, as people read MACs and parameters: 864,400 -> "864.4 K", 12.5e6 -> "12.5 M"."""
    if not _is_num(x):
        return DASH
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= factor:
            return f"{x / factor:.1f} {prefix}{unit}"
    return f"{x:g} {unit}".rstrip()


def fmt_times(x: Any) -> str:
    if not _is_num(x):
        return DASH
    return f"{x:.1f}{TIMES}" if abs(x) >= 10 else f"{x:.2f}{TIMES}"


def fmt_points(x: Any, signed: bool = True) -> str:
    if not _is_num(x):
        return DASH
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _g(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
        if d is None:
            return None
    return d


def _md_cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], align_right_from: int = 1) -> list[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    out.append("| " + " | ".join("---" if i < align_right_from else "---:" for i in range(len(header))) + " |")
    for r in rows:
        out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
    return out


def model_label(role: str, entry: dict) -> str:
    return entry.get("label") or DEFAULT_LABELS.get(role) or role


NOISY = "(noisy)"  # marks a timing flagged unreliable (measure.timing); the "Timing noise" section says why


def _noisy(block: Any) -> bool:
    return isinstance(block, dict) and block.get("reliable") is False


def _mark(text: str, block: Any) -> str:
    """`text`, marked when the timing table `block` is flagged unreliable (and something was measured)."""
    return f"{text} {NOISY}" if _noisy(block) and text != DASH else text


def _fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


# ------------------------------------------------------------------------------------------------- primary metric
# The task's primary metric (`run.dataset.primary_metric`), as the text names it, and what stands where accuracy
# stands in the classic tables and verdict.
ACCURACY_LIKE = {"accuracy", "pearson"}  # primary metrics the classic verdict (kd_gain_points) already speaks of
CORRELATIONS = {"mcc", "pearson", "spearman"}  # in -1..1: shown x100, not as percent


def _primary(report: dict) -> Optional[dict]:
    return _g(report, "run", "dataset", "primary_metric")


def _primary_label(primary: dict) -> str:
    label = primary.get("label") or primary["name"]
    return f"{label} ({'higher' if primary.get('higher_is_better') else 'lower'} is better)"


# figures that are not fractions, shown as they are with these decimals (causal_lm's primary metric is the loss):
# never as a percent. Their gains stay in points (x 100), which the task's label says (1 point = 0.01 nats)
RAW_METRICS = {"loss": 4, "perplexity": 3, "bpc": 4}


def fmt_value(name: str, value: Any) -> str:
    """A primary-metric value in a table cell: a raw figure as it is, any other x 100 (percent / x100)."""
    return fmt_fixed(value, RAW_METRICS[name]) if name in RAW_METRICS else fmt_pct(value)


def _fmt_metric(name: str, value: Any) -> str:
    """Fractions as percent; correlations (MCC, Pearson, Spearman) x100; FA/FR AUC (an area in 0..1, 0 best) with 4
    decimals; raw figures (a loss, perplexity, bits per character) as they are."""
    if name == "fa_fr_auc":
        return fmt_fixed(value, 4)
    if name in RAW_METRICS:
        return fmt_fixed(value, RAW_METRICS[name])
    if name in CORRELATIONS:
        return f"{fmt_pct(value)} (x100)" if _is_num(value) else DASH
    return f"{fmt_pct(value)} %" if _is_num(value) else DASH


# primary metrics only a regression task declares (text_regression's choices, pearson or spearman): its models have
# no accuracy, and Pearson r stands where accuracy stands elsewhere (`figures.headline`: the `accuracy_*` ratios and
# `kd_gain_points` hold it)
REGRESSION_PRIMARY = {"pearson", "spearman"}


def _regression(report: dict) -> bool:
    """A regression report (text_regression): Pearson r stands where accuracy stands elsewhere. Read from the primary
    metric the report declares (`run.dataset.primary_metric`); a report written before tasks declared one is judged
    by `_regression_from_keys`."""
    primary = _primary(report)
    if primary and primary.get("name"):
        return primary["name"] in REGRESSION_PRIMARY
    return _regression_from_keys(report)


def _regression_from_keys(report: dict) -> bool:
    """The fallback for old reports that declare no primary metric: guessed from the quality keys (a Pearson r)."""
    return any(_g(e, "quality", "pearson") is not None for e in report["models"].values())

def _headline(e: dict) -> Any:
    return _g(e, "quality", "pearson") if _g(e, "quality", "accuracy") is None else _g(e, "quality", "accuracy")

