"""`report.md`, rendered from a validated report dict: its sections, in order.

Every sentence that states a result is derived from the numbers in the report (sign, size, noise scale), so
the prose cannot disagree with the table. The parts live in their own modules (issue 24): `format` (cell
formatters), `tables`, `seeds_text`, `verdict` (the KD verdict) and `console` (the rich tables); their public names
stay importable from here, where callers have always found them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from leankd.io import write_text_atomic
from leankd.report.base import TEACHER_ROLE
from leankd.report.console import print_console, render_console, render_console_deployment
from leankd.report.format import (
    ACCURACY_LIKE,
    CORRELATIONS,
    DASH,
    NOISY,
    TIMES,
    _g,
    _is_num,
    _md_table,
    _noisy,
    _primary,
    _primary_label,
    fmt_auto,
    fmt_fixed,
    fmt_int,
    fmt_millions,
    fmt_pct,
    fmt_points,
    fmt_times,
    model_label,
)
from leankd.report.schema import validate_report
from leankd.report.seeds_text import seeds_kd_sentence, seeds_tables
from leankd.report.tables import (
    _feature_cost_table,
    _per_class_table,
    _ratio_table,
    deployment_table_rows,
    main_table_rows,
)
from leankd.report.verdict import (
    KD_TIE_POINTS,
    SECONDARY_LABELS,
    _kd_noise_sentence,
    _seed_caveat,
    kd_gain_sentence,
    sanity_console_caption,
    sanity_kd_paragraph,
)

__all__ = [  # defined here, and re-exported from the modules the renderer was split into
    "PLOT_FILES", "render_markdown", "write_markdown", "timing_noise_lines", "quality_flag_lines",
    "primary_versus_lines", "data_statement_lines",
    "print_console", "render_console", "render_console_deployment",
    "ACCURACY_LIKE", "CORRELATIONS", "DASH", "NOISY", "TIMES", "fmt_auto", "fmt_fixed", "fmt_int", "fmt_millions",
    "fmt_pct", "fmt_points", "fmt_times", "model_label",
    "seeds_kd_sentence", "seeds_tables", "deployment_table_rows", "main_table_rows",
    "KD_TIE_POINTS", "SECONDARY_LABELS", "kd_gain_sentence", "sanity_console_caption", "sanity_kd_paragraph",
]

PLOT_FILES = {
    "curves.png": "Training curves",
    "quality_vs_macs.png": "Primary metric vs MACs",
    "quality_vs_latency.png": "Primary metric vs CPU latency",
}


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

    samples = _sample_lines(report)
    if samples:
        lines += ["", "## Samples", ""] + samples

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


def _sample_lines(report: dict) -> list[str]:
    """Each model's continuation of the same prompt (causal_lm's `generation` block), as text blocks."""
    entries = [(role, e) for role, e in report["models"].items() if _g(e, "generation", "sample") is not None]
    if not entries:
        return []
    g = entries[0][1]["generation"]
    lines = [f"The same prompt continued by each model ({g.get('prompt_tokens')} prompt tokens, "
             f"sampled at temperature {g.get('sample_temperature')}, seed {g.get('sample_seed')}). Prompt:", "",
             "```", str(g.get("prompt") or ""), "```"]
    for role, e in entries:
        lines += ["", f"{model_label(role, e)}:", "", "```", e["generation"]["sample"], "```"]
    return lines


def write_markdown(run_dir: str | Path, report: dict, plots: Optional[list] = None) -> Path:
    """Atomically write `<run_dir>/report.md`; returns its path."""
    path = Path(run_dir) / "report.md"
    write_text_atomic(path, render_markdown(report, run_dir=Path(run_dir), plots=plots))
    return path


# ------------------------------------------------------------------------------------------------- timing noise
def _timing_tables(entry: dict) -> list[tuple[str, Any]]:
    """(what, block) of every timing table of a model entry that carries the noise verdict."""
    out = [(f"{d.upper()} latency", _g(entry, "latency", d)) for d in ("cpu", "cuda")]
    out += [("streaming", entry.get("streaming")), ("decoding", entry.get("decoding")),
            ("generation", entry.get("generation"))]
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


# ------------------------------------------------------------------------------------------------- sanity / data
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
