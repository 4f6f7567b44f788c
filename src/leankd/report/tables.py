"""The report's tables, as (header, rows) or markdown lines: the main one-column-per-model table, versus the
teacher, the deployment artifacts, the per-step cost of feature losses and per-class accuracy. Split from `markdown`
(issue 24): the console renders the same rows (`console`), so the two cannot disagree."""
from __future__ import annotations

from typing import Callable, Optional

from leankd.report.base import STUDENT_ROLE, TEACHER_ROLE
from leankd.report.format import (
    DASH,
    NOISY,
    TIMES,
    _g,
    _headline,
    _is_num,
    _mark,
    _md_cell,
    _md_table,
    _regression,
    fmt_auto,
    fmt_fixed,
    fmt_int,
    fmt_millions,
    fmt_pct,
    fmt_points,
    fmt_times,
    model_label,
)


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


def _energy(entry: dict) -> str:
    tr = entry.get("training")
    if tr is None:
        return DASH
    return fmt_auto(tr.get("energy_j")) if _is_num(tr.get("energy_j")) else "n/a"


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
    own_rows = [tuple(r) for r in _g(report, "run", "dataset", "quality_rows") or []]
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
    elif own_rows:  # a task that names its quality rows (causal_lm: loss, perplexity, bits per character)
        for i, (key, label, digits) in enumerate(own_rows):
            row(label + (split if i == 0 else ""), lambda e, k=key, d=digits: fmt_fixed(_g(e, "quality", k), d))
    else:
        row(f"accuracy (%){split}", lambda e: fmt_pct(_g(e, "quality", "accuracy")))
        row("macro-F1 (%)", lambda e: fmt_pct(_g(e, "quality", "macro_f1")))
    if any(_g(e, "quality", "mcc") is not None for _, e in entries):  # text: what GLUE reports
        row("Matthews corr. (x100)", lambda e: fmt_pct(_g(e, "quality", "mcc")))
    if any(_g(e, "quality", "f1_positive") is not None for _, e in entries):
        row("F1 of class 1 (%)", lambda e: fmt_pct(_g(e, "quality", "f1_positive")))
    if "loss" not in [key for key, _, _ in own_rows]:
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
    generated = [b for _, e in entries for b in [r["batch_size"] for r in (_g(e, "generation", "latency") or [])]]
    for b in dict.fromkeys(generated):  # causal_lm: one generated token of every sequence, KV cache
        row(f"generation b{b}: CPU ms per token (KV cache, median)",
            lambda e, b_=b: _mark(fmt_fixed(next((r["ms_per_token"] for r in _g(e, "generation", "latency") or []
                                                  if r["batch_size"] == b_), None), 3), e.get("generation")))
    context = _g(report, "run", "dataset", "context")
    if isinstance(context, int) and context > 0:  # a model's MACs are for one block of `context` tokens
        row("MACs per token (M)", lambda e: fmt_millions(_g(e, "cost", "macs") / context
                                                         if _is_num(_g(e, "cost", "macs")) else None))
    row("train wall time (s, incl. validation)", lambda e: fmt_auto(_g(e, "training", "wall_time_s")))
    row("epochs", lambda e: fmt_int(_g(e, "training", "epochs")))
    unit = _g(report, "run", "dataset", "sample_unit") or "samples"  # causal_lm: a batch's size counts tokens
    row(f"{unit}/s", lambda e: fmt_auto(_g(e, "training", "samples_per_s")))
    row("train peak memory (MB)", lambda e: fmt_auto(_g(e, "training", "peak_memory_mb")))
    row("energy (J)", _energy)
    row("loss used", lambda e: _g(e, "training", "loss") or DASH)
    return header, rows


# ------------------------------------------------------------------------------------------------- ratios / deployment
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
    # a task that names its quality rows (causal_lm) is compared on its first two (loss, perplexity) and the change
    # of the first, as they are; every other task on its headline and its change in points
    own = [tuple(r) for r in _g(report, "run", "dataset", "quality_rows") or []][:2]
    quality_header = ([label for _, label, _ in own] + [f"Δ {own[0][1]}"] if own else
                      [_headline_name(report), "Δ (points)" if _regression(report) else "Δ accuracy (points)"])
    header = ["model", "format", *quality_header, "size (MB)", f"{TIMES} smaller"]
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
    def quality(e: dict, base: Optional[dict]) -> list[str]:
        if not own:
            return [fmt_pct(_headline(e)), DASH if base is None else
                    fmt_points((vs.get(e["role"]) or {}).get("accuracy_delta_points"))]
        cells = [fmt_fixed(_g(e, "quality", key), digits) for key, _, digits in own]
        key, _, digits = own[0]
        a, b = _g(e, "quality", key), _g(base, "quality", key) if base is not None else None
        return cells + [f"{a - b:+.{digits}f}" if _is_num(a) and _is_num(b) else DASH]

    for base in bases:
        e = models[base]
        rows.append([f"{model_label(base, e)} (fp32)", "torch", *quality(e, None),
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
        rows.append([a["target"], a["format"], *quality({**e, "role": role}, models.get(a["base_role"])),
                     fmt_fixed(_g(e, "cost", "size_mb"), 2),
                     fmt_times(r.get("size_x_smaller"))]
                    + [_mark(fmt_fixed(_g(e, "latency", "cpu", f"batch_{b}", "median_ms")), _g(e, "latency", "cpu"))
                       for b in sizes]
                    + [_ratio_cell(r, f"latency_cpu_x_faster_batch_{b}") for b in sizes]
                    + [fmt_fixed(a.get("max_abs_diff"), 4) if a.get("max_abs_diff") is not None else DASH,
                       left_text or DASH]
                    + ([fmt_fixed(_g(e, "training", "wall_time_s"), 0)] if trained else [])
                    + [status])
    return header, rows


# --------------------------------------------------------------------------------------------- feature cost / per class
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
