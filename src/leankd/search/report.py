"""What a search found: the leaderboard, the Pareto front (table and plots) and the experiment report.

Every number is read back from the runs' own report.json files (the study's stored values are only used when a
run directory is not on this machine, and the row says so), and every sentence of the conclusion is computed
from those numbers: the best candidates' mean and spread over seeds beside a baseline of the same student
trained alone with the same budget and seeds, and whether the difference is larger than the seed spread.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from optuna.trial import TrialState

from ..io import atomic_path, write_json_atomic, write_text_atomic
from ..report.schema import load_report
from .evidence import first_rung_sentence, first_rung_signal, selection_bias_sentence, teacher_origin
from .metrics import (CPU_LATENCY, candidate_metrics, last_val_accuracy, latency_fallback_note, params_key, resolve,
                      selection_value)
from .pareto import pareto_front
from .space import FAMILY, MISSING, get_path
from .study import RUNGS

QUALITY_POINTS = 2.0  # "within N points of the teacher" in the conclusion
CHEAPER = 4.0  # "N x fewer MACs than the teacher"


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e5:
            return f"{v:.3e}"
        return f"{v:.{digits}g}"
    return str(v)


def _metric(name: str, v: Any) -> str:
    """A metric as a reader wants it: accuracy-like in %, MACs/FLOPs in millions, counts with separators."""
    if v is None:
        return "-"
    if name in ("accuracy", "val_accuracy", "f1", "mcc", "ser", "ter", "quality.accuracy"):
        return f"{100 * v:.2f}%"
    if name in ("macs", "flops"):
        return f"{v / 1e6:.2f}M"
    if name == "params":
        return f"{int(v):,}"
    return _num(v)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def trial_rows(search) -> list[dict]:
    """One row per trial of every rung, metrics read from the trial's report.json."""
    rows = []
    for rung in RUNGS:
        for t in search.studies[rung].get_trials(deepcopy=False):
            params = t.user_attrs.get("params") or {}
            row = {"rung": rung, "trial": t.number, "state": t.state.name.lower(), "params": params,
                   "seed": t.user_attrs.get("seed", search.recipe.seed), "source": t.user_attrs.get("source"),
                   "run_dir": t.user_attrs.get("run_dir"), "duration_s": t.user_attrs.get("duration_s"),
                   "note": t.user_attrs.get("error") or t.user_attrs.get("pruned")
                   or ("cut off by a killed worker; queued again" if t.user_attrs.get("stale") else None)
                   or (f"the settings of trial {t.user_attrs['duplicate_of']} again: not run, the sampler was asked "
                       "for others" if t.user_attrs.get("duplicate_of") is not None else None),
                   "metrics": dict(t.user_attrs.get("metrics") or {}), "metrics_from": "study",
                   "baseline_metrics": t.user_attrs.get("baseline_metrics"),
                   "violations": t.user_attrs.get("violations"), "latency_note": t.user_attrs.get("latency_note")}
            if row["run_dir"] and t.state == TrialState.COMPLETE:
                path = search.dir / row["run_dir"] / "report.json"
                if path.exists():
                    report = load_report(path)
                    targets = search.targets_of(params)
                    run_dir = search.dir / row["run_dir"]
                    scales = search.ms_per_mac()
                    row["metrics"] = {**candidate_metrics(report, targets, search.metrics, ms_per_mac=scales),
                                      "val_accuracy": last_val_accuracy(run_dir / "student" / "metrics.jsonl")}
                    row["latency_note"] = latency_fallback_note(report, targets, search.metrics, ms_per_mac=scales)
                    if rung == "confirm":
                        row["metrics"]["student_accuracy"] = report["models"]["student"]["quality"].get("accuracy")
                        row["baseline_metrics"] = {
                            **candidate_metrics(report, [], search.metrics, "baseline", scales),
                            "val_accuracy": last_val_accuracy(run_dir / "baseline" / "metrics.jsonl")}
                    row["metrics_from"] = str(Path(row["run_dir"]) / "report.json")
            rows.append(row)
    return rows


def base_numbers(search) -> dict:
    """Teacher, baseline and starting KD student of the base run (the search's reference points)."""
    report = load_report(search.dir / "base" / "report.json")
    targets = list(search.recipe.compress.targets)
    out = {}
    for role in ("teacher", "baseline", "student"):
        if role in report["models"]:
            which = targets if role == "student" else []
            out[role] = {**candidate_metrics(report, which, search.metrics, role, search.ms_per_mac()),
                         "val_accuracy": last_val_accuracy(search.dir / "base" / role / "metrics.jsonl")}
            note = latency_fallback_note(report, which, search.metrics, role, search.ms_per_mac())
            if note:
                out.setdefault("latency_notes", {})[role] = note
    return out


def _objective_values(row: dict, search) -> Optional[list[float]]:
    """The values the search selected on (validation accuracy for accuracy objectives)."""
    values = [selection_value(row["metrics"], o.metric) for o in search.cfg.objectives]
    return None if any(v is None for v in values) else values


def _feasible(row: dict) -> bool:
    return all(v <= 0 for v in row.get("violations") or [])


def full_candidates(rows: list[dict], seeds: int = 1) -> list[dict]:
    """Full-budget candidates: the complete runs of one setting over its seeds, as one row of mean metrics (the
    first run's number names it; `runs` keeps each seed's row); one with fewer than `seeds` complete runs (a seed
    failed) is left out. Mirrors Search.full_candidates."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["rung"] == "full" and r["state"] == "complete":
            groups.setdefault(params_key(r["params"]), []).append(r)
    out = []
    for runs in groups.values():
        if len(runs) < seeds:
            continue
        runs.sort(key=lambda r: r["trial"])
        keys = dict.fromkeys(k for r in runs for k in r["metrics"])
        metrics = {k: _mean([r["metrics"].get(k) for r in runs]) for k in keys}
        violations = [max((v for r in runs for v in r.get("violations") or []), default=0.0)]  # worst seed
        out.append({**runs[0], "metrics": metrics, "violations": violations, "runs": runs,
                    "latency_note": next((r["latency_note"] for r in runs if r.get("latency_note")), None),
                    "seeds": [r["seed"] for r in runs]})
    return out


def _mean(values: list) -> Optional[float]:
    """The seeds' mean, or None when a seed lacks the number."""
    return None if any(v is None for v in values) else statistics.fmean(values)


def front_rows(rows: list[dict], search, rung: str) -> list[dict]:
    """The Pareto front of a rung (full budget: of the candidates' means over their seeds), best first."""
    pool = full_candidates(rows, search.cfg.full_seeds) if rung == "full" else [r for r in rows if r["rung"] == rung]
    done = [r for r in pool if r["state"] == "complete" and _feasible(r) and _objective_values(r, search) is not None]
    idx = pareto_front([_objective_values(r, search) for r in done], search.directions)
    front = [done[i] for i in idx]
    first = search.cfg.objectives[0]
    front.sort(key=lambda r: selection_value(r["metrics"], first.metric), reverse=first.direction == "maximize")
    return front


def _mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def confirmations(rows: list[dict], search) -> list[dict]:
    """Per confirmed candidate: accuracy over seeds (mean, sd, min-max) beside its same-budget baseline."""
    out = []
    by_source: dict[int, list[dict]] = {}
    for r in rows:
        if r["rung"] == "confirm" and r["state"] == "complete":
            by_source.setdefault(r["source"], []).append(r)
    full = {r["trial"]: r for r in full_candidates(rows, search.cfg.full_seeds)}
    for source, runs in sorted(by_source.items()):
        runs.sort(key=lambda r: r["seed"])
        acc = [r["metrics"].get("accuracy") for r in runs]  # as deployed (an artifact when the trial compresses)
        fp32 = [r["metrics"].get("student_accuracy", r["metrics"].get("accuracy")) for r in runs]
        base = [(r.get("baseline_metrics") or {}).get("accuracy") for r in runs]
        m, sd = _mean_sd(acc)
        sm, ssd = _mean_sd(fp32)
        bm, bsd = _mean_sd(base)
        search_time = full.get(source, {}).get("metrics", {}).get("accuracy")  # its mean over the full seeds
        entry = {"full_trial": source, "params": runs[0]["params"], "seeds": [r["seed"] for r in runs],
                 "accuracy": acc, "accuracy_mean": m, "accuracy_sd": sd,
                 "student_accuracy": fp32, "student_mean": sm, "student_sd": ssd,
                 "baseline_accuracy": base, "baseline_mean": bm, "baseline_sd": bsd,
                 "search_time_accuracy": search_time, "search_time_seeds": full.get(source, {}).get("seeds"),
                 "search_time_per_seed": [r["metrics"].get("accuracy") for r in full.get(source, {}).get("runs", [])],
                 "metrics": runs[0]["metrics"]}
        if sm is not None and bm is not None:  # the KD gain: fp32 student against fp32 baseline, same seeds
            gain = sm - bm
            entry["gain_points"] = 100 * gain
            entry["gain_exceeds_spread"] = gain > 0 and gain > max(ssd or 0.0, bsd or 0.0)
        valid = [a for a in acc if a is not None]
        if search_time is not None and valid:  # the selected run against fresh seeds: selection bias would show here
            lo, hi = min(valid), max(valid)
            entry["search_time_within_spread"] = (lo - 1e-12 <= search_time <= hi + 1e-12
                                                  or abs(search_time - m) <= (sd or 0.0))
            entry["search_time_minus_fresh_points"] = 100 * (search_time - m)
            entry["fresh_sd_points"] = 100 * (sd or 0.0)
        out.append(entry)
    return out


def recipe_diff(params: dict, search) -> list[tuple[str, Any, Any]]:
    """(path, starting value, candidate value) of every searched setting that differs."""
    out = []
    for path, value in params.items():
        if path == FAMILY:  # the alpha-mix is the kd family
            start = "kd" if search.base_raw.get("distill", {}).get("loss") is None else "explicit loss"
        else:
            start = get_path(search.base_raw, path)
            start = "(default)" if start is MISSING else start
        if start != value:
            out.append((path, start, value))
    return out


# ------------------------------------------------------------------------------------------------- writing
def leaderboard_table(rows: list[dict], metrics: list[str]) -> tuple[str, str]:
    """(markdown, csv) of every trial."""
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    head = ["rung", "trial", "state", "seed", *params, *metrics, "duration_s", "run_dir", "note"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        note = "; ".join(n for n in (r["note"], r.get("latency_note")) if n) or None
        cells = [r["rung"], r["trial"], r["state"], r["seed"], *[r["params"].get(p) for p in params],
                 *[r["metrics"].get(m) for m in metrics], r["duration_s"], r["run_dir"], note]
        writer.writerow(["" if c is None else (json.dumps(c) if isinstance(c, (list, dict)) else c) for c in cells])
        shown = [_num(c) if not isinstance(c, (list, dict)) else json.dumps(c) for c in cells]
        for i, m in enumerate(metrics):  # the markdown says which latencies are estimates (the note says why)
            if _estimated(r, m):
                shown[4 + len(params) + i] += " (est. from MACs)"
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n", buf.getvalue()


def _estimated(row: dict, metric: str) -> bool:
    """Whether a row's value of `metric` is a CPU latency estimated from MACs (its own timing was noise)."""
    return bool(row.get("latency_note")) and row["metrics"].get(metric) is not None \
        and metric != "val_accuracy" and resolve(metric, metric).startswith(CPU_LATENCY)


def plot_fronts(rows: list[dict], search, base: dict) -> list[str]:
    """Quality vs each cost objective: every trial, the full-budget front, teacher and baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = search.cfg.objectives
    quality = objectives[0]
    files = []
    for cost in objectives[1:]:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for rung, style in (("explore", dict(c="0.7", s=18, label="first rung")),
                            ("full", dict(c="tab:blue", s=30, label="full budget"))):
            pts = [(r["metrics"].get(cost.metric), r["metrics"].get(quality.metric)) for r in rows
                   if r["rung"] == rung and r["state"] == "complete"]
            pts = [p for p in pts if None not in p]
            if pts:
                ax.scatter(*zip(*pts), **style)
        front = front_rows(rows, search, "full") or front_rows(rows, search, "explore")
        pts = sorted((r["metrics"][cost.metric], r["metrics"][quality.metric]) for r in front
                     if r["metrics"].get(cost.metric) is not None)
        if pts:
            ax.plot(*zip(*pts), "o-", c="tab:red", label="Pareto front (all objectives)")
        for role, marker in (("teacher", "*"), ("baseline", "s"), ("student", "D")):
            m = base.get(role, {})
            if m.get(cost.metric) is not None and m.get(quality.metric) is not None:
                ax.scatter([m[cost.metric]], [m[quality.metric]], marker=marker, s=80, c="k" if role == "teacher"
                           else "tab:green", label={"student": "starting recipe"}.get(role, role))
        ax.set_xlabel(cost.metric + (" (lower is better)" if cost.direction == "minimize" else ""))
        ax.set_ylabel(f"{quality.metric} (test; the front is chosen on validation)")
        if cost.metric in ("macs", "flops", "params"):
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e5 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{search.recipe.name}: {quality.metric} vs {cost.metric}")
        name = f"pareto_{cost.metric.replace('.', '_')}.png"
        with atomic_path(search.dir / name) as tmp:  # a unique temporary name: two workers may write at once
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        files.append(name)
    return files


def first_rung_check(rows: list[dict], search, base_report: dict) -> tuple[Optional[dict], Optional[str]]:
    """Whether the first rung's accuracies can tell its trials apart (evidence.first_rung_signal), judged on what
    the search selected on (validation accuracy, else test), and the report's warning when they cannot."""
    if "accuracy" not in [o.metric for o in search.cfg.objectives]:
        return None, None
    done = [r for r in rows if r["rung"] == "explore" and r["state"] == "complete"]
    on_val = all(r["metrics"].get("val_accuracy") is not None for r in done)
    dataset = (base_report.get("run") or {}).get("dataset") or {}
    n = dataset.get("val_size") if on_val else dataset.get("eval_size")
    signal = first_rung_signal([selection_value(r["metrics"], "accuracy") for r in done],
                               dataset.get("num_classes"), n)
    if signal:
        signal["split"] = "validation" if on_val else "test"
    return signal, first_rung_sentence(signal, search.cfg.rung_fraction, "validation" if on_val else "test")


def write_search_report(search) -> dict:
    rows = trial_rows(search)
    base = base_numbers(search)
    base_report = load_report(search.dir / "base" / "report.json")
    signal, warning = first_rung_check(rows, search, base_report)
    metrics = list(dict.fromkeys(["val_accuracy", *search.metrics]))
    front = front_rows(rows, search, "full")
    explore_front = front_rows(rows, search, "explore")
    confirmed = confirmations(rows, search)
    md_table, csv_text = leaderboard_table(rows, metrics)
    write_text_atomic(search.dir / "leaderboard.csv", csv_text)
    write_text_atomic(search.dir / "leaderboard.md", md_table)
    plots = plot_fronts(rows, search, base)
    conclusion = conclude(front or explore_front, confirmed, base, search, "full budget" if front else "first rung",
                          warning)
    latency_notes = latency_summary(rows, base)
    summary = {"name": search.recipe.name, "objectives": [o.model_dump() for o in search.cfg.objectives],
               "constraints": [c.model_dump() for c in search.cfg.constraints], "trials": rows,
               "front": [{"rung": r["rung"], "trial": r["trial"], "runs": [x["trial"] for x in r.get("runs", [r])],
                          "metrics": r["metrics"]} for r in front],
               "first_rung_front": [r["trial"] for r in explore_front], "base": base, "confirmations": confirmed,
               "conclusion": conclusion, "plots": plots, "budget_stop": search.budget_stop,
               "space_exhausted": search.space_exhausted, "first_rung_signal": signal,
               "latency_notes": latency_notes,
               "wall_time_s": round(time.perf_counter() - search.started, 1)}
    write_text_atomic(search.dir / "search_report.md", render(search, rows, front, explore_front, confirmed, base,
                                                              conclusion, plots, warning, latency_notes,
                                                              teacher_origin(base_report,
                                                                             search.recipe.teacher.checkpoint)))
    write_json_atomic(search.dir / "search.json", summary)
    return summary


def conclude(front: list[dict], confirmed: list[dict], base: dict, search, budget: str = "full budget",
             first_rung_warning: Optional[str] = None) -> dict:
    """Sentences computed from the numbers: what was found, and whether distillation measurably helped."""
    teacher = base.get("teacher", {})
    out: dict[str, Any] = {"sentences": []}
    say = out["sentences"].append
    if first_rung_warning:
        say(first_rung_warning)
    t_acc, t_macs = teacher.get("accuracy"), teacher.get("macs")
    if t_acc is not None and t_macs:
        good = [r for r in front if r["metrics"].get("accuracy") is not None and r["metrics"].get("macs")
                and t_macs / r["metrics"]["macs"] >= CHEAPER and 100 * (t_acc - r["metrics"]["accuracy"])
                <= QUALITY_POINTS]
        out["cheap_and_close"] = [r["trial"] for r in good]
        if good:
            r = max(good, key=lambda r: r["metrics"]["accuracy"])
            say(f"Found: {budget} trial {r['trial']} is {t_macs / r['metrics']['macs']:.1f}x cheaper in MACs than "
                f"the teacher and {100 * (t_acc - r['metrics']['accuracy']):.2f} points below its accuracy "
                f"({_pct(r['metrics']['accuracy'])} vs {_pct(t_acc)}).")
        else:
            say(f"None found: no front candidate is both >= {CHEAPER:g}x cheaper in MACs than the teacher and within "
                f"{QUALITY_POINTS:g} points of its accuracy ({_pct(t_acc)}).")
    for c in confirmed:
        if c.get("gain_points") is None:
            continue
        seeds = len(c["seeds"])
        text = (f"Trial {c['full_trial']} re-run with {seeds} fresh seeds: KD student {_pct(c['student_mean'])} +- "
                f"{100 * c['student_sd']:.2f}, the same student trained alone with the same budget "
                f"{_pct(c['baseline_mean'])} +- {100 * c['baseline_sd']:.2f}: ")
        if c["gain_exceeds_spread"]:
            text += f"distillation gains {c['gain_points']:+.2f} points, more than the seed spread."
        elif c["gain_points"] > 0:
            text += (f"{c['gain_points']:+.2f} points, within the seed spread: no gain is shown at this number of "
                     "seeds.")
        else:
            text += f"{c['gain_points']:+.2f} points: distillation did not help this student here."
        if c.get("search_time_within_spread") is not None:
            text += selection_bias_sentence(c["search_time_accuracy"], c["accuracy"], c.get("search_time_seeds") or [])
        say(text)
    start = base.get("student", {})
    if front and start.get("accuracy") is not None:
        best = front[0]
        diff = 100 * (best["metrics"]["accuracy"] - start["accuracy"])
        say(f"Against the starting recipe's KD student ({_pct(start['accuracy'])} test accuracy, one seed): the "
            f"{budget} front's best by validation {search.cfg.objectives[0].metric} is trial {best['trial']} at "
            f"{_pct(best['metrics']['accuracy'])} ({diff:+.2f} points).")
    if not front:
        say("No candidate completed at the full budget: see the leaderboard's notes for why.")
    return out


def latency_summary(rows: list[dict], base: dict) -> list[str]:
    """One line per run whose CPU latency was noise (what stood in for it, and why), base run first."""
    lines = [f"base {role}: {note}" for role, note in (base.get("latency_notes") or {}).items()]
    return lines + [f"{r['rung']} trial {r['trial']}: {r['latency_note']}" for r in rows if r.get("latency_note")]


def render(search, rows, front, explore_front, confirmed, base, conclusion, plots, first_rung_warning=None,
           latency_notes=(), teacher_line="The teacher is trained once (`base/`) and loaded by every trial") -> str:
    cfg = search.cfg
    objectives = ", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives)
    constraints = ", ".join(f"{c.metric} {'<= ' + _num(c.max) if c.max is not None else ''}"
                            f"{' >= ' + _num(c.min) if c.min is not None else ''}" for c in cfg.constraints) or "none"
    space = "\n".join(f"  - `{p}`: " + (f"one of {d.choices}" if d.choices is not None else
                                      f"{d.low} .. {d.high}{' (log)' if d.log else ''}")
                      for p, d in cfg.space.items())
    counts = {rung: sum(1 for r in rows if r["rung"] == rung and r["state"] == "complete") for rung in RUNGS}
    lines = [f"# Search report: {search.recipe.name}", "",
             "## Idea",
             f"Find students and distillation settings that {objectives}, starting from the recipe "
             f"`{search.dir / 'recipe.yaml'}` (teacher `{search.recipe.teacher.model}`, student "
             f"`{search.recipe.student.model}`), subject to constraints: {constraints}.", "",
             "## Plan",
             f"- Space:\n{space}",
             f"- {cfg.trials} first-rung trials at {cfg.rung_fraction:.0%} of the epochs (sampler: "
             f"{cfg.sampler if cfg.sampler != 'auto' else 'TPE, multivariate'}, seed {cfg.seed})"
             + (f", time budget {cfg.time_budget_min:g} min" if cfg.time_budget_min else "") + ".",
             f"- The non-dominated first-rung candidates (at most {search.promote_limit()}) re-run at the full budget"
             + (f" with {cfg.full_seeds} seeds each; a candidate's numbers are their mean." if cfg.full_seeds > 1
                else "."),
             f"- The best {cfg.confirm_top} full-budget front candidates re-run with {cfg.confirm_seeds} more seeds, "
             "each beside its student trained alone (same budget, data and seed).",
             f"- Every run uses the same data split (`data.split_seed` = {search.recipe.split_seed}): seeds vary "
             "training only.",
             f"- {teacher_line}; every number below comes from a run's report.json.",
             "- Selection (sampler, promotion, front, what is confirmed) uses validation accuracy; the test split is "
             "only reported.", "",
             "## Results",
             f"Trials completed: {counts['explore']} first rung, {counts['full']} full budget, {counts['confirm']} "
             f"confirmation runs (every trial: `leaderboard.md`, `leaderboard.csv`)."
             + (f" The time budget stopped the first rung after {search.budget_stop} trials." if search.budget_stop
                else "")
             + (f" The first rung stopped after {search.space_exhausted} trials: every setting of the space was "
                "tried, or the sampler kept proposing tried ones." if search.space_exhausted is not None else ""),
             ""]
    if first_rung_warning:
        lines += [f"**{first_rung_warning}**", ""]
    if latency_notes:
        lines += ["CPU latencies that the timer marked unreliable were not selected on: an estimate from the "
                  "run's MACs stands in for each (no value where no model was timed reliably), marked \"est. from "
                  "MACs\" below and in the leaderboard:", ""] + [f"- {n}" for n in latency_notes] + [""]
    show = list(dict.fromkeys([o.metric for o in cfg.objectives] +
                              ["accuracy", "val_accuracy", "macs", "params", "size_mb", "latency_ms"]))
    lines += ["### Reference points (base run, full budget, one seed)", "",
              "| model | " + " | ".join(show) + " |", "|---|" + "---|" * len(show)]
    for role, label in (("teacher", "teacher"), ("baseline", "baseline student (no KD)"),
                        ("student", "starting recipe's KD student")):
        if role in base:
            marked = {"latency_note": (base.get("latency_notes") or {}).get(role), "metrics": base[role]}
            lines.append(f"| {label} | " + " | ".join(_metric(m, base[role].get(m))
                                                       + (" (est. from MACs)" if _estimated(marked, m) else "")
                                                       for m in show) + " |")
    mean_of = f", mean of {cfg.full_seeds} seeds" if cfg.full_seeds > 1 else ""
    lines += ["", f"### Pareto front (full budget{mean_of})" if front else "### Pareto front (first rung; nothing "
              "reached the full budget)", ""]
    shown = front or explore_front
    params = list(dict.fromkeys(k for r in shown for k in r["params"]))
    lines += ["| trial | " + " | ".join(show) + " | " + " | ".join(f"`{p}`" for p in params) + " |",
              "|---|" + "---|" * (len(show) + len(params))]
    for r in shown:
        lines.append(f"| {r['rung']} {r['trial']} | " + " | ".join(
            _metric(m, r["metrics"].get(m)) + (" (est. from MACs)" if _estimated(r, m) else "") for m in show)
            + " | " + " | ".join(_num(r["params"].get(p)) for p in params) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += ["## Comparison with the baseline", ""]
    if confirmed:
        lines += ["Fresh seeds (none that the search selected on), each with the candidate's student trained alone "
                  "with the same budget, data and seed; test accuracy, mean +- sample sd. Search-time accuracy: the "
                  "candidate's full-budget mean (per seed in brackets).", "",
                  "| trial | seeds | as deployed | KD student (fp32) | same-budget baseline | KD gain (points) | "
                  "search-time accuracy | per seed (deployed) |", "|---|---|---|---|---|---|---|---|"]
        for c in confirmed:
            lines.append(f"| full {c['full_trial']} | {c['seeds']} | {_pct(c['accuracy_mean'])} +- "
                         f"{100 * (c['accuracy_sd'] or 0):.2f} | {_pct(c['student_mean'])} +- "
                         f"{100 * (c['student_sd'] or 0):.2f} | {_pct(c['baseline_mean'])} +- "
                         f"{100 * (c['baseline_sd'] or 0):.2f} | {_num(c.get('gain_points'), 3)} | "
                         f"{_pct(c['search_time_accuracy'])}"
                         + (" (" + ", ".join(map(_pct, c["search_time_per_seed"])) + ")"
                            if len(c.get("search_time_per_seed") or []) > 1 else "") + " | "
                         + ", ".join(_pct(a) for a in c["accuracy"]) + " |")
    else:
        lines.append("No candidate was confirmed (no full-budget front, or search.confirm_top = 0).")
    lines += ["", "## Changes", "Each front candidate as a diff against the starting recipe:", ""]
    for r in shown:
        diff = recipe_diff(r["params"], search)
        lines.append(f"- {r['rung']} trial {r['trial']}: " + ("; ".join(f"`{p}`: {_num(a)} -> {_num(b)}"
                                                                     for p, a, b in diff) or "the starting recipe"))
    lines += ["", "## Conclusion", ""] + [f"- {s}" for s in conclusion["sentences"]] + [""]
    return "\n".join(lines)


__all__ = ["write_search_report", "trial_rows", "front_rows", "confirmations", "resolve"]
