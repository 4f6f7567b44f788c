"""`report.md` and the console table, both rendered from a validated report dict.

Every sentence that states a result is derived from the numbers in the report (sign, size, noise scale), so
the prose cannot disagree with the table.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

from leankd.io import write_text_atomic
from leankd.report.schema import (
    BASELINE_ROLE,
    DEFAULT_LABELS,
    STUDENT_ROLE,
    TEACHER_ROLE,
    seeds_primary,
    validate_report,
)

DASH = "—"
TIMES = "×"
PLOT_FILES = {
    "curves.png": "Training curves",
    "quality_vs_macs.png": "Primary metric vs MACs",
    "quality_vs_latency.png": "Primary metric vs CPU latency",
}
KD_TIE_POINTS = 0.1  # |gain| below this is reported as "within 0.1 points of"


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


# ------------------------------------------------------------------------------------------------- main table
def _batch_sizes(report: dict, device: str) -> list[int]:
    sizes: set[int] = set()
    for entry in report["models"].values():
        lat = _g(entry, "latency", device) or {}
        for k, v in lat.items():
            if k.startswith("batch_") and k[6:].isdigit() and v is not None:
                sizes.add(int(k[6:]))
    return sorted(sizes)


def _threads_note(report: dict, device: str) -> str:
    if device != "cpu":
        return ""
    threads = {_g(e, "latency", "cpu", "threads") for e in report["models"].values()} - {None}
    if len(threads) == 1:
        n = threads.pop()
        return f", {n} thread{'s' if n != 1 else ''}"
    if threads:
        return ", threads differ: " + "/".join(str(t) for t in sorted(threads))
    return ""


NOISY = "(noisy)"  # marks a timing flagged unreliable (measure.timing); the "Timing noise" section says why


def _noisy(block: Any) -> bool:
    return isinstance(block, dict) and block.get("reliable") is False


def _mark(text: str, block: Any) -> str:
    """`text`, marked when the timing table `block` is flagged unreliable (and something was measured)."""
    return f"{text} {NOISY}" if _noisy(block) and text != DASH else text


def _timing_tables(entry: dict) -> list[tuple[str, Any]]:
    """(what, block) of every timing table of a model entry that carries the noise verdict."""
    out = [(f"{d.upper()} latency", _g(entry, "latency", d)) for d in ("cpu", "cuda")]
    out += [("streaming", entry.get("streaming")), ("decoding", entry.get("decoding"))]
    return [(what, b) for what, b in out if isinstance(b, dict)]


def timing_noise_lines(report: dict) -> list[str]:
    """Why timings are marked (noisy), with the machine load and threads they were timed with, and how to
    re-measure; [] when no timing is flagged."""
    lines, threads = [], None
    for role, e in report["models"].items():
        tables = _timing_tables(e) + [(f"step cost of {r.get('loss')}", r)
                                      for r in (_g(e, "training", "feature_costs") or [])]
        for what, block in tables:
            if not _noisy(block):
                continue
            load = block.get("load_avg")
            threads = threads or block.get("threads")
            state = (f"load average {'/'.join(f'{x:g}' for x in load)} (1/5/15 min) on {block.get('cpu_count') or '?'} "
                     f"CPUs, {block.get('threads') or '?'} thread(s)" if load else
                     f"{block.get('threads') or '?'} thread(s)")
            reasons = "; ".join(block.get("noise") or []) or "flagged"
            lines.append(f"- {model_label(role, e)}, {what}: {reasons} ({state}).")
    if not lines:
        return []
    hint = "--threads 1" if threads and threads > 1 else "--threads N"
    return lines + ["", f"Timings marked {NOISY} may be spoiled by other work on the machine (each reason above "
                    "names its limit); speed ratios built from them are not shown (n/a " + NOISY + "; null in "
                    "report.json, listed under `unreliable_latency`). To re-measure from the saved weights, on a quiet "
                    f"machine: `leankd report RUN_DIR --remeasure {hint}` (fewer threads than cores keeps the "
                    "timing off the cores other processes use; a busy core stalls every thread of a parallel op)."]


def _energy(entry: dict) -> str:
    tr = entry.get("training")
    if tr is None:
        return DASH
    return fmt_auto(tr.get("energy_j")) if _is_num(tr.get("energy_j")) else "n/a"


def _regression(report: dict) -> bool:
    """A regression report (text_regression): Pearson r stands where accuracy stands elsewhere."""
    return any(_g(e, "quality", "pearson") is not None for e in report["models"].values())


def _headline(e: dict) -> Any:
    return _g(e, "quality", "pearson") if _g(e, "quality", "accuracy") is None else _g(e, "quality", "accuracy")


def _headline_name(report: dict) -> str:
    return "Pearson r (x100)" if _regression(report) else "accuracy (%)"


def main_table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the one-column-per-model table, shared by markdown and console output."""
    models = report["models"]
    entries = [(role, e) for role, e in models.items() if not e.get("artifact")]  # artifacts: own table
    header = ["metric"] + [model_label(role, e) for role, e in entries]
    rows: list[list[str]] = []

    def row(name: str, fn: Callable[[dict], str]) -> None:
        rows.append([name] + [fn(e) for _, e in entries])

    splits = {_g(e, "quality", "split") for _, e in entries} - {None}
    split = f" ({splits.pop()})" if len(splits) == 1 else ""
    row("architecture", lambda e: e.get("architecture") or DASH)
    if _regression(report):
        row(f"Pearson r (x100){split}", lambda e: fmt_pct(_g(e, "quality", "pearson")))
        row("Spearman (x100)", lambda e: fmt_pct(_g(e, "quality", "spearman")))
        row("MSE", lambda e: fmt_fixed(_g(e, "quality", "mse"), 4))
    elif any(_g(e, "quality", "ser") is not None for _, e in entries):  # seq2seq: decoded, scored per source
        beam = next((_g(e, "quality", "beam") for _, e in entries if _g(e, "quality", "beam")), None)

        def pair(key: str) -> Callable[[dict], str]:
            return lambda e: f"{fmt_pct(_g(e, 'quality', key))} / {fmt_pct(_g(e, 'quality', key + '_beam'))}"

        row(f"sequence accuracy, greedy (%){split}", lambda e: fmt_pct(_g(e, "quality", "accuracy")))
        row(f"sequence error rate, greedy / beam {beam} (%)", pair("ser"))
        row(f"token error rate, greedy / beam {beam} (%)", pair("ter"))
        if any(_g(e, "quality", "bleu") is not None for _, e in entries):
            row(f"BLEU, greedy / beam {beam}", lambda e: f"{fmt_fixed(_g(e, 'quality', 'bleu'), 2)} / "
                                                   f"{fmt_fixed(_g(e, 'quality', 'bleu_beam'), 2)}")
            row(f"chrF, greedy / beam {beam}", lambda e: f"{fmt_fixed(_g(e, 'quality', 'chrf'), 2)} / "
                                                   f"{fmt_fixed(_g(e, 'quality', 'chrf_beam'), 2)}")
    else:
        row(f"accuracy (%){split}", lambda e: fmt_pct(_g(e, "quality", "accuracy")))
        row("macro-F1 (%)", lambda e: fmt_pct(_g(e, "quality", "macro_f1")))
    if any(_g(e, "quality", "mcc") is not None for _, e in entries):  # text: what GLUE reports
        row("Matthews corr. (x100)", lambda e: fmt_pct(_g(e, "quality", "mcc")))
    if any(_g(e, "quality", "f1_positive") is not None for _, e in entries):
        row("F1 of class 1 (%)", lambda e: fmt_pct(_g(e, "quality", "f1_positive")))
    row("eval loss", lambda e: fmt_fixed(_g(e, "quality", "loss"), 4))
    if any(_g(e, "quality", "fa_fr_auc") is not None for _, e in entries):  # binary keyword spotting
        row("FA/FR AUC (lower is better)", lambda e: fmt_fixed(_g(e, "quality", "fa_fr_auc"), 4))
        far = next((_g(e, "quality", "far_target") for _, e in entries if _g(e, "quality", "far_target")), None)
        row(f"false rejections at {fmt_pct(far)}% false alarms (%)", lambda e: fmt_pct(_g(e, "quality", "frr_at_far")))
    row("params", lambda e: fmt_int(_g(e, "cost", "params")))
    row("size (MB)", lambda e: fmt_fixed(_g(e, "cost", "size_mb"), 2))
    row("MACs (M)", lambda e: fmt_millions(_g(e, "cost", "macs")))
    row("FLOPs (M)", lambda e: fmt_millions(_g(e, "cost", "flops")))
    for device, dev_name in (("cpu", "CPU"), ("cuda", "CUDA")):
        note = _threads_note(report, device)
        for b in _batch_sizes(report, device):
            key = f"batch_{b}"
            if b == 1:
                row(
                    f"{dev_name} latency b{b} median / p90 (ms{note})",
                    lambda e, k=key, d=device: _mark(
                        f"{fmt_fixed(_g(e, 'latency', d, k, 'median_ms'))} / {fmt_fixed(_g(e, 'latency', d, k, 'p90_ms'))}"
                        if _g(e, "latency", d, k) is not None
                        else DASH, _g(e, "latency", d)
                    ),
                )
            else:
                row(
                    f"{dev_name} latency b{b} median (ms{note})",
                    lambda e, k=key, d=device: _mark(fmt_fixed(_g(e, "latency", d, k, "median_ms")), _g(e, "latency", d)),
                )
    row("inference peak memory (MB)", lambda e: fmt_auto(_g(e, "memory", "inference_peak_mb")))
    row("model memory b1: params + peak activations (MB)", lambda e: fmt_auto(_g(e, "memory", "model_memory_mb")))
    if any(e.get("streaming") for _, e in entries):
        chunk = next(_g(e, "streaming", "chunk_ms") for _, e in entries if e.get("streaming"))
        row(f"streaming: CPU ms per {fmt_auto(chunk)} ms chunk (median)",
            lambda e: _mark(fmt_fixed(_g(e, "streaming", "median_ms"), 3), e.get("streaming")))
        row("streaming: real-time factor",
            lambda e: _mark(fmt_fixed(_g(e, "streaming", "real_time_factor"), 4), e.get("streaming")))
    decoded = [(search, b) for _, e in entries for search, b in
               [(r["search"], r["batch_size"]) for r in (_g(e, "decoding", "latency") or [])]]
    for search, b in dict.fromkeys(decoded):
        row(f"decoding, {search} b{b}: CPU ms per sequence (median)",
            lambda e, s_=search, b_=b: _mark(fmt_fixed(next((r["ms_per_sequence"] for r in _g(e, "decoding", "latency") or []
                                                             if r["search"] == s_ and r["batch_size"] == b_), None), 3),
                                             e.get("decoding")))
    row("train wall time (s, incl. validation)", lambda e: fmt_auto(_g(e, "training", "wall_time_s")))
    row("epochs", lambda e: fmt_int(_g(e, "training", "epochs")))
    row("samples/s", lambda e: fmt_auto(_g(e, "training", "samples_per_s")))
    row("train peak memory (MB)", lambda e: fmt_auto(_g(e, "training", "peak_memory_mb")))
    row("energy (J)", _energy)
    row("loss used", lambda e: _g(e, "training", "loss") or DASH)
    return header, rows


# ------------------------------------------------------------------------------------------------- ratios / KD
_RATIO_ROWS = [
    ("size_x_smaller", f"size ({TIMES} smaller)", fmt_times),
    ("params_x_fewer", f"params ({TIMES} fewer)", fmt_times),
    ("macs_x_fewer", f"MACs ({TIMES} fewer)", fmt_times),
    ("memory_x_less", f"model memory b1 ({TIMES} less)", fmt_times),
]


def _ratio_cell(ratios: dict, key: str) -> str:
    """A latency ratio, or "n/a (noisy)" where a timing it is built from is flagged unreliable."""
    return f"n/a {NOISY}" if key in (ratios.get("unreliable_latency") or []) else fmt_times(ratios.get(key))


def _ratio_table(report: dict) -> list[str]:
    vs = _g(report, "ratios", "vs_teacher") or {}
    roles = [r for r, e in report["models"].items() if r != TEACHER_ROLE and r in vs and not e.get("artifact")]
    if not roles or TEACHER_ROLE not in report["models"]:
        return []
    teacher_label = model_label(TEACHER_ROLE, report["models"][TEACHER_ROLE])
    header = [f"vs {teacher_label}"] + [model_label(r, report["models"][r]) for r in roles]
    rows = [[name] + [fn(vs[r].get(key)) for r in roles] for key, name, fn in _RATIO_ROWS]
    lat_keys: list[str] = []
    for r in roles:
        for k in vs[r]:
            if k.startswith("latency_") and k not in lat_keys:
                lat_keys.append(k)

    def lat_order(k: str) -> tuple[int, int]:
        dev, b = k[len("latency_"):].split("_x_faster_batch_")
        return (0 if dev == "cpu" else 1, int(b))

    for k in sorted(lat_keys, key=lat_order):
        dev, b = k[len("latency_"):].split("_x_faster_batch_")
        rows.append([f"{dev.upper()} latency b{b} ({TIMES} faster)"] + [_ratio_cell(vs[r], k) for r in roles])
    name = "Pearson r" if _regression(report) else "accuracy"
    rows.append([f"{name} retention (%)"] + [fmt_fixed(vs[r].get("accuracy_retention_pct"), 2) for r in roles])
    rows.append([f"{name} vs teacher (points)"] + [fmt_points(vs[r].get("accuracy_delta_points")) for r in roles])
    return _md_table(header, rows)


def deployment_table_rows(report: dict) -> Optional[tuple[list[str], list[list[str]]]]:
    """(header, rows) of the deployment-artifact table: each artifact next to the fp32 model it came from."""
    models = report["models"]
    arts = [(r, e) for r, e in models.items() if e.get("artifact")]
    if not arts:
        return None
    vs = _g(report, "ratios", "vs_base") or {}
    sizes = [b for b in _batch_sizes(report, "cpu")]
    header = ["model", "format", _headline_name(report), "Δ (points)" if _regression(report) else "Δ accuracy (points)",
              "size (MB)", f"{TIMES} smaller"]
    header += [f"CPU b{b} median (ms)" for b in sizes] + [f"{TIMES} faster b{b}" for b in sizes]
    header += ["max |Δ logit|", "left in float"]
    trained = any(_g(e, "training", "wall_time_s") is not None for _, e in arts)  # qat / qat-control fine-tune
    header += ["fine-tune (s)"] if trained else []
    header += ["status"]
    rows = []
    bases = []
    for _, e in arts:
        base = e["artifact"]["base_role"]
        if base in models and base not in bases:
            bases.append(base)
    for base in bases:
        e = models[base]
        rows.append([f"{model_label(base, e)} (fp32)", "torch", fmt_pct(_headline(e)), DASH,
                     fmt_fixed(_g(e, "cost", "size_mb"), 2), DASH]
                    + [_mark(fmt_fixed(_g(e, "latency", "cpu", f"batch_{b}", "median_ms")), _g(e, "latency", "cpu"))
                       for b in sizes]
                    + [DASH for _ in sizes] + [DASH, DASH] + ([DASH] if trained else []) + ["reference"])
    for role, e in arts:
        a, r = e["artifact"], vs.get(role, {})
        left = a.get("left_in_float") or {}
        left_text = ", ".join(f"{k}" for k in list(left)[:3]) + (f" (+{len(left) - 3})" if len(left) > 3 else "")
        drop = a.get("accuracy_drop_points")
        status = (f"FLAGGED: drops {fmt_fixed(drop)} > {fmt_fixed(a.get('max_drop_points'))} points"
                  if a.get("flagged") else "ok")
        rows.append([a["target"], a["format"], fmt_pct(_headline(e)),
                     fmt_points(r.get("accuracy_delta_points")), fmt_fixed(_g(e, "cost", "size_mb"), 2),
                     fmt_times(r.get("size_x_smaller"))]
                    + [_mark(fmt_fixed(_g(e, "latency", "cpu", f"batch_{b}", "median_ms")), _g(e, "latency", "cpu"))
                       for b in sizes]
                    + [_ratio_cell(r, f"latency_cpu_x_faster_batch_{b}") for b in sizes]
                    + [fmt_fixed(a.get("max_abs_diff"), 4) if a.get("max_abs_diff") is not None else DASH,
                       left_text or DASH]
                    + ([fmt_fixed(_g(e, "training", "wall_time_s"), 0)] if trained else [])
                    + [status])
    return header, rows


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


# ------------------------------------------------------------------------------------------------- seeds
def _paired_seeds(report: dict) -> Optional[dict]:
    """The KD student's paired comparison with the baseline over two or more seeds, if the run has one."""
    paired = _g(report, "seeds", "paired", STUDENT_ROLE)
    return paired if paired and paired.get("n", 0) >= 2 and _is_num(paired.get("mean_points")) else None


def _fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


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
    rows = [[label(role), f"{fmt_pct(st.get('mean'))} ± {fmt_pct(st.get('sd'))}"] + [fmt_pct(v) for v in st["values"]]
            for role, st in seeds["roles"].items()]
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
    unit = "x100" if name in CORRELATIONS else "%"
    return f"{primary.get('label') or name} ({unit}, {'higher' if primary['higher_is_better'] else 'lower'} is better)"


# ------------------------------------------------------------------------------------------------- per class
def _feature_cost_table(report: dict) -> list[str]:
    """One training step with the logit loss alone, then with each feature loss added (train.step_cost)."""
    rows = _g(report, "models", STUDENT_ROLE, "training", "feature_costs")
    if not rows:
        return []
    kind = rows[0].get("memory_kind") or "memory"
    unmeasurable = kind.startswith("not measurable") or kind.startswith("not available")

    def mb(r: dict, key: str) -> str:
        return "not measurable" if unmeasurable or r.get(key) is None and r.get("peak_mb") is None else fmt_fixed(r.get(key), 2)

    held = any(r.get("held_mb") is not None for r in rows)
    body = [[_md_cell(r["loss"]), _mark(fmt_fixed(r.get("ms_per_step")), r), _mark(fmt_fixed(r.get("extra_ms_per_step"), 1), r),
             mb(r, "peak_mb"), mb(r, "extra_mb")] + ([mb(r, "held_mb"), mb(r, "extra_held_mb")] if held else [])
            for r in rows]
    header = ["loss", "ms / step", "extra ms", "step peak MB", "extra MB at peak"]
    header += ["held for backward MB", "extra held MB"] if held else []
    return _md_table(header, body) + [
        "", "First row: the logit loss alone; each other row adds one feature loss to it. Time: interleaved rounds of "
            "steps on one training batch (forward, teacher, loss, backward), median of each round's fastest block; "
            f"memory: {kind}" + (" (the step's peak, and the bytes alive when the loss is computed: what autograd "
                                 "keeps for backward; a feature term often stays under the peak the teacher's "
                                 "forward sets, but always holds its kept feature maps and adapter activations)"
                                 if held and not unmeasurable else "") + "."]


def _per_class_table(report: dict) -> list[str]:
    entries = [(r, e) for r, e in report["models"].items() if _g(e, "quality", "per_class_accuracy")]
    if not entries:
        return []
    classes: list[str] = list(_g(report, "run", "dataset", "classes") or [])
    for _, e in entries:
        for c in e["quality"]["per_class_accuracy"]:
            if c not in classes:
                classes.append(c)
    header = ["class"] + [model_label(r, e) for r, e in entries]
    rows = [[c] + [fmt_pct(e["quality"]["per_class_accuracy"].get(c)) for _, e in entries] for c in classes]
    return _md_table(header, rows)


# ------------------------------------------------------------------------------------------------- render
def _run_summary(report: dict) -> list[str]:
    run = report["run"]
    ds, env = run.get("dataset") or {}, run.get("environment") or {}
    lines = []
    parts = []
    if ds.get("source"):
        parts.append(f"`{ds['source']}`")
    if ds.get("num_classes") is not None:
        parts.append(f"{ds['num_classes']} classes")
    sizes = []
    for key, name in (("train_size", "train"), ("val_size", "val")):
        if ds.get(key) is not None:
            sizes.append(f"{fmt_int(ds[key])} {name}")
    if ds.get("eval_size") is not None:
        sizes.append(f"{fmt_int(ds['eval_size'])} eval" + (f" (split `{ds['eval_split']}`)" if ds.get("eval_split") else ""))
    elif ds.get("eval_split"):
        sizes.append(f"eval split `{ds['eval_split']}`")
    if sizes:
        parts.append(", ".join(sizes))
    lines.append(f"- **Dataset:** {'; '.join(parts) if parts else DASH}")
    if run.get("task"):
        lines.append(f"- **Task:** {run['task']}")
    dev = [env.get("device") or DASH]
    if env.get("cpu"):
        dev.append(f"CPU {env['cpu']}")
    if env.get("cpu_threads") is not None:
        dev.append(f"{env['cpu_threads']} threads")
    if env.get("gpu"):
        dev.append(f"GPU {env['gpu']}")
    lines.append(f"- **Device:** {', '.join(dev)}")
    sw = []
    if env.get("torch"):
        sw.append(f"torch {env['torch']}")
    if env.get("python"):
        sw.append(f"Python {env['python']}")
    sw.append(f"leankd {report.get('leankd_version', DASH)}")
    if env.get("platform"):
        sw.append(env["platform"])
    lines.append(f"- **Software:** {', '.join(sw)}")
    lines.append(f"- **Seed:** {run.get('seed') if run.get('seed') is not None else DASH}")
    if report.get("seeds"):
        lines[-1] += f" (main; students also trained with seeds {', '.join(map(str, report['seeds']['seeds']))})"
    lines.append(f"- **Created:** {report.get('created_utc', DASH)}")
    origins = [f"{model_label(r, e)}: {e['origin']}" for r, e in report["models"].items() if e.get("origin")]
    if origins:
        lines.append(f"- **Origin:** {'; '.join(origins)}")
    return lines


def _plot_dir(report: dict, run_dir: Optional[Path]) -> Optional[Path]:
    if run_dir is not None:
        return Path(run_dir)
    rd = _g(report, "run", "run_dir")
    return Path(rd) if rd else None


def _speedup_lines(report: dict) -> list[str]:
    """One line per trained model: the throughput switches it trained with, and requested ones that did not apply."""
    lines = []
    for role, e in report["models"].items():
        applied, skipped = _g(e, "training", "speedups"), _g(e, "training", "speedup_notes") or []
        if applied is None and not skipped:
            continue
        line = f"- {model_label(role, e)}: {', '.join(applied) if applied else 'none'}"
        lines.append(line + "".join(f"; {note}" for note in skipped))
    return lines


def render_markdown(report: dict, run_dir: Optional[Path] = None, plots: Optional[list] = None) -> str:
    """Render `report.md`. Plot links: the names in `plots` if given, else the plot files present in `run_dir`
    (default: `report.run.run_dir`). Links are relative, as `report.md` lives next to the plots."""
    report = validate_report(report)
    lines = [f"# leankd report: {report['run']['name']}", ""]
    lines += _run_summary(report)
    lines += ["", "## Data: split and preprocessing", ""] + data_statement_lines(report)
    lines += ["", "## Results", ""]
    header, rows = main_table_rows(report)
    for r in rows:
        if r[0] == "loss used":  # code span: `0.9*kd + 0.1*ce` must not turn into italics
            r[1:] = [f"`{c}`" if c != DASH else c for c in r[1:]]
    lines += _md_table(header, rows)
    lines.append("")
    robust = any(_g(e, "latency", "cpu", "method") for e in report["models"].values())  # older reports: plain medians
    lines.append(
        ("Latency is per batch (torch.utils.benchmark blocks timed in interleaved rounds after warm-up; median of each "
         "round's fastest block); " if robust else "Latency is per batch (median of timed runs after warm-up); ")
        + "MACs/FLOPs are per sample; "
        "\"—\" means not measured or not applicable (e.g. no training time for a teacher loaded from a checkpoint)."
    )
    flags = quality_flag_lines(report)
    if flags:
        lines += ["", "## Results that cannot be right", ""] + flags

    ratio_lines = _ratio_table(report)
    if ratio_lines:
        lines += ["", "## Versus the teacher", ""] + ratio_lines + primary_versus_lines(report)

    deployment = deployment_table_rows(report)
    if deployment:
        lines += ["", "## Deployment artifacts", ""] + _md_table(*deployment)
        lines += ["", "Each artifact is measured like the fp32 model it came from (same eval split, same batches, "
                  "CPU latency timed interleaved). Δ and ratios are against that fp32 model."]
        for role, e in report["models"].items():
            a = e.get("artifact") or {}
            for note in a.get("notes", []):
                lines.append(f"- {a.get('target', role)}: {note}")

    lines += ["", "## Distillation gain", ""]
    kd = [kd_gain_sentence(report)]
    f1 = _g(report, "ratios", "kd_gain_macro_f1_points")
    if _is_num(f1):
        main = f" (main seed {report['seeds']['main_seed']})" if report.get("seeds") else ""
        kd.append(f"Macro-F1 difference{main}: {fmt_points(f1)} points.")
    if _is_num(_g(report, "ratios", "kd_gain_points")):
        noise = _kd_noise_sentence(report)
        if noise:
            kd.append(noise)
        seed = _seed_caveat(report)
        if seed:
            kd.append(seed)
    lines.append(" ".join(kd))
    lines[-1] = sanity_kd_paragraph(report) or lines[-1]  # models at chance, or a primary metric other than accuracy

    seed_lines = seeds_tables(report)
    if seed_lines:
        lines += ["", "## Seeds", ""] + seed_lines

    speed = _speedup_lines(report)
    if speed:
        lines += ["", "## Training speed-ups", ""] + speed

    layer = _feature_cost_table(report)
    if layer:
        lines += ["", "## Layer distillation: cost per step", ""] + layer

    pc = _per_class_table(report)
    if pc:
        lines += ["", "## Per-class accuracy (%)", ""] + pc

    noise = timing_noise_lines(report)
    if noise:
        lines += ["", "## Timing noise", ""] + noise

    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]

    if plots is not None:
        names = [Path(p).name for p in plots]
    else:
        d = _plot_dir(report, run_dir)
        names = [n for n in PLOT_FILES if d is not None and (d / n).is_file()]
    names = [n for n in PLOT_FILES if n in names] + [n for n in names if n not in PLOT_FILES]
    if names:
        lines += ["", "## Plots", ""]
        for n in names:
            lines += [f"![{PLOT_FILES.get(n, n)}]({n})", ""]
        lines.pop()
    return "\n".join(lines) + "\n"


def write_markdown(run_dir: str | Path, report: dict, plots: Optional[list] = None) -> Path:
    """Atomically write `<run_dir>/report.md`; returns its path."""
    path = Path(run_dir) / "report.md"
    write_text_atomic(path, render_markdown(report, run_dir=Path(run_dir), plots=plots))
    return path


# ------------------------------------------------------------------------------------------------- console
def render_console(report: dict):
    """The main table as a compact `rich.table.Table` (print it with `rich.console.Console().print`)."""
    from rich.table import Table

    report = validate_report(report)
    header, rows = main_table_rows(report)
    table = Table(title=f"leankd: {report['run']['name']}", show_lines=False, pad_edge=False)
    table.add_column(header[0], style="bold", no_wrap=True)
    for h in header[1:]:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    gain = _g(report, "ratios", "kd_gain_points")
    paired = _paired_seeds(report)
    if paired:
        table.caption = f"KD gain over baseline: {_paired_stats(paired)}"
    elif _is_num(gain):
        table.caption = f"KD gain over baseline: {fmt_points(gain)} points (one seed)"
    table.caption = sanity_console_caption(report) or table.caption
    return table


def render_console_deployment(report: dict):
    """The deployment-artifact table for the console, or None when the run made no artifacts."""
    from rich.table import Table

    found = deployment_table_rows(validate_report(report))
    if not found:
        return None
    header, rows = found
    # an 80-column terminal fits these; report.md has the rest (format, max |Δ logit|, left in float, × faster at
    # the smaller batch sizes)
    faster = [h for h in header if h.startswith(f"{TIMES} faster")]
    dropped = {"format", "left in float", "max |Δ logit|", *faster[:-1]}
    keep = [i for i, h in enumerate(header) if h not in dropped]
    table = Table(title="deployment artifacts (vs the fp32 model)", pad_edge=False)
    for i in keep:
        table.add_column(header[i], justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*[r[i] for i in keep])
    return table


def print_console(report: dict, console: Any = None) -> None:
    from rich.console import Console

    (console or Console()).print(render_console(report))


# ------------------------------------------------------------------------------------------------- sanity
# Results that cannot be right, the task's primary metric, and what was done to the data (report.sanity and the
# task's `primary_metric` / `split_method` / `preprocessing` in run.dataset). Kept apart from the shared renderers
# above: they only add sections and, when the verdict would mislead, replace it.
ACCURACY_LIKE = {"accuracy", "pearson"}  # primary metrics the classic verdict (kd_gain_points) already speaks of
CORRELATIONS = {"mcc", "pearson", "spearman"}  # in -1..1: shown x100, not as percent
SECONDARY_LABELS = {"fa_fr_auc": "FA/FR AUC (lower is better)", "ter": "token error rate (lower is better)"}


def _primary(report: dict) -> Optional[dict]:
    return _g(report, "run", "dataset", "primary_metric")


def _primary_label(primary: dict) -> str:
    label = primary.get("label") or primary["name"]
    return f"{label} ({'higher' if primary.get('higher_is_better') else 'lower'} is better)"


def _fmt_metric(name: str, value: Any) -> str:
    """Fractions as percent; correlations (MCC, Pearson, Spearman) x100; FA/FR AUC (an area in 0..1, 0 best) with 4
    decimals."""
    if name == "fa_fr_auc":
        return fmt_fixed(value, 4)
    if name in CORRELATIONS:
        return f"{fmt_pct(value)} (x100)" if _is_num(value) else DASH
    return f"{fmt_pct(value)} %" if _is_num(value) else DASH


def quality_flag_lines(report: dict) -> list[str]:
    """One block per flagged model: what is wrong and the likely causes found in the run's data."""
    lines = []
    for role, e in report["models"].items():
        flags = e.get("quality_flags") or []
        if not flags:
            continue
        lines.append(f"- **{model_label(role, e)}**: " + "; ".join(f["message"] for f in flags) + ".")
        causes = list(dict.fromkeys(c for f in flags for c in f.get("causes") or []))
        for cause in causes:
            lines.append(f"  - likely cause: {cause}.")
        if not causes:
            lines.append("  - no likely cause is visible in the run's data (checked: input size against the model's "
                         "total stride, optimizer steps with BatchNorm, the training-loss history); check the labels "
                         "and the learning rate.")
    return lines


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


def primary_versus_lines(report: dict) -> list[str]:
    """Each model against the teacher on the primary metric, when it is not accuracy (the ratio table's rows are)."""
    primary, vs = _primary(report), _g(report, "ratios", "vs_teacher") or {}
    if not primary or primary.get("name") in ACCURACY_LIKE or TEACHER_ROLE not in report["models"]:
        return []
    parts = [f"{model_label(r, report['models'][r])} {fmt_points(v.get('primary_delta_points'))}"
             for r, v in vs.items() if not report["models"].get(r, {}).get("artifact")]
    if not parts:
        return []
    return ["", f"On the primary metric, {_primary_label(primary)}, versus the teacher in points (+ = better): "
                + ", ".join(parts) + "."]


def data_statement_lines(report: dict) -> list[str]:
    """How the splits were made, what was done to the data, and metrics that could not be computed."""
    ds = _g(report, "run", "dataset") or {}
    lines = []
    split = ds.get("split_method")
    if split:
        counts = []
        for name in ("train", "val", "test"):
            n_ex = (split.get("examples") or {}).get(name)
            n_gr = (split.get("groups") or {}).get(name)
            if n_ex is None and n_gr is None:
                continue
            shown = f"{name} {fmt_int(n_ex)}" if n_ex is not None else name
            if n_gr is not None:
                shown += f" ({fmt_int(n_gr)} {split.get('unit') or 'groups'})"
            counts.append(shown)
        line = f"- **Split:** {split['method']}"
        line += f": {', '.join(counts)}" if counts else ""
        line += f" ({split['detail']})" if split.get("detail") else ""
        lines.append(line + ".")
        if split.get("leak_warning"):
            lines.append(f"- **Warning:** {split['leak_warning']}")
    else:
        lines.append("- **Split:** not recorded by this task.")
    for step in ds.get("preprocessing") or []:
        line = f"- **Preprocessing:** {step['what']}" + (" (on by default)" if step.get("by_default") else "")
        lines.append(line + ".")
        if step.get("warning"):
            lines.append(f"- **Warning:** {step['warning']}.")
    for m in ds.get("unavailable_metrics") or []:
        fix = f": `{m['fix']}`" if m.get("fix") else ""
        lines.append(f"- **Not computed:** {m['name']} ({m['why']}){fix}.")
    primary = _primary(report)
    if primary and primary.get("name") not in ACCURACY_LIKE:
        lines.append(f"- **Primary metric:** {_primary_label(primary)}; the KD verdict is judged on it.")
    return lines
