"""Report text: the notes under a report's tables, composed from the measured model blocks, and `finish_report`,
which turns model blocks into report.json (and, with a run directory, its markdown and plots)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..measure.models import environment
from ..tasks.base import Task
from . import build_report, write_markdown, write_plots, write_report
from .figures import headline
from .sanity import add_quality_flags

LOGIT_KD_ROLE = "logit_kd"  # the logit-only KD control trained beside a student with feature losses


def finish_report(name: str, run_dir: Optional[Path], seed: int, task: Task, models: dict, device,
                  extra_notes: Optional[list[str]] = None, seeds: Optional[dict] = None, write: bool = True) -> dict:
    """Build report.json from the model blocks (and the `seeds` block of a run over seeds); write it, its markdown
    and plots when there is a run dir (and `write`: the pipeline writes its report with its artifacts in one commit,
    rundir.commit)."""
    notes = (list(getattr(task, "notes", [])) + report_notes(models, seed, several_seeds=bool(seeds))
             + list(extra_notes or []))
    run = {"name": name, "run_dir": str(run_dir) if run_dir else None, "seed": seed, "task": task.kind,
           "dataset": task.describe(), "environment": environment(torch.device(device))}
    add_quality_flags(models, run["dataset"], run_dir)  # at chance / collapsed, with the causes the run shows
    report = build_report(run, models, notes, seeds=seeds)
    if run_dir is not None and write:
        write_report(run_dir, report)
        write_markdown(run_dir, report, plots=write_plots(report, run_dir))
    return report


def qat_notes(models: dict) -> list[str]:
    """QAT against PTQ of the same student and against the same-budget control, from the measured accuracies."""
    acc = {role: m["quality"]["accuracy"] for role, m in models.items() if m.get("quality", {}).get("accuracy") is not None}
    if "student_qat" not in acc:
        return []
    if any(n.startswith("QAT FELL BACK") for n in models["student_qat"].get("artifact", {}).get("notes", [])):
        return ["Quantization-aware distillation diverged at every lr tried: the qat artifact is the int8-static "
                "model (see its note), so it measures PTQ, not QAT."]
    parts = [f"QAT int8 {100 * acc['student_qat']:.2f}%"]
    for role, what in (("student_int8_static", "PTQ of the same student (int8-static)"),
                       ("student_qat_control", "the same fine-tuning in fp32 then PTQ (qat-control)")):
        if role in acc:
            diff = 100 * (acc["student_qat"] - acc[role])
            parts.append(f"{diff:+.2f} points vs {what} at {100 * acc[role]:.2f}%")
    return ["Quantization-aware distillation: " + "; ".join(parts) + ". Differences under about one point are within "
            "seed-to-seed variation on small evaluation sets."]


def cache_notes(models: dict) -> list[str]:
    """Offline KD: how many views, the disk used and what building the cache cost."""
    cache = ((models.get("student") or {}).get("training") or {}).get("teacher_cache")
    if not cache:
        return []
    built = (f"built in {cache['build_s']:.1f} s" if cache.get("build_s") is not None
             else "reused from an earlier stage or run")
    stored = "fp16" if not cache.get("top_k") else f"top-{cache['top_k']} logits + a tail"
    if cache.get("bytes_per_row"):
        stored += f", {cache['bytes_per_row']} bytes per row"
    if cache.get("augmented") is False:
        return [f"The KD student learned from cached teacher logits of its {cache['samples']} training examples "
                f"(one fixed input each), {cache['disk_mb']:.2f} MB on disk ({stored}), {built}; the teacher was not "
                "run while it trained."]
    return [f"The KD student learned from cached teacher logits: {cache['views']} fixed augmentation views x "
            f"{cache['samples']} samples, {cache['disk_mb']:.2f} MB on disk ({stored}), {built}; each epoch replays "
            "one view, so the student saw those views only, while the baseline saw a fresh augmentation every epoch."]


def transfer_notes(models: dict) -> list[str]:
    """Text augmentation (Tang et al.): how many unlabeled texts the KD student learned from."""
    t = ((models.get("student") or {}).get("training") or {}).get("transfer_set")
    if not t:
        return []
    s = t["settings"]
    return [f"The KD student trained on {t['original']} labeled training texts plus {t['augmented']} augmented, "
            f"unlabeled ones ({s['copies']} tries per text: [MASK] p={s['mask']:g}, word dropout p={s['dropout']:g}, "
            f"n-gram (n <= {s['ngram_max']}) p={s['ngram']:g}; repeats dropped), which only the teacher's outputs "
            "teach; the baseline saw the labeled texts only."]


def feature_notes(models: dict) -> list[str]:
    """What the feature (layer) losses bought over the logit-only KD control, and what they cost, measured."""
    student, control = models.get("student"), models.get(LOGIT_KD_ROLE)
    if not student or not control:
        return []
    acc_s, acc_c = headline(student), headline(control)
    if acc_s is None or acc_c is None:
        return []
    parts = [f"Layer distillation: {100 * acc_s:.2f}% vs {100 * acc_c:.2f}% for logit-only KD at the same budget "
             f"({100 * (acc_s - acc_c):+.2f} points, one seed)"]
    ts, tc = student.get("training") or {}, control.get("training") or {}
    if ts.get("samples_per_s") and tc.get("samples_per_s"):
        parts.append(f"training throughput {ts['samples_per_s']:.0f} vs {tc['samples_per_s']:.0f} samples/s "
                     f"({tc['samples_per_s'] / ts['samples_per_s']:.2f}x the time per step)")
    if ts.get("peak_memory_mb") and tc.get("peak_memory_mb"):
        parts.append(f"peak training memory {ts['peak_memory_mb']:.0f} vs {tc['peak_memory_mb']:.0f} MB")
    several = len([t for t in (ts.get("loss") or "").split(" + ") if "(" in t and "->" in t]) > 1
    caveat = (" The quality difference is for all feature terms together; a control per term would be needed to "
              "credit each one." if several else "")
    return ["; ".join(parts) + ". Per-term step costs are in the layer-distillation table." + caveat]


def report_notes(models: dict, seed: int, several_seeds: bool = False) -> list[str]:
    notes = []
    if "baseline" in models and "student" in models and not several_seeds:
        notes.append(f"The KD gain is measured with one seed ({seed}); KD gains are often around one point, "
                     "within seed-to-seed variation, so claims need at least 2 seeds.")
    energy_sources = {m["training"]["energy_source"] for m in models.values() if m.get("training")}
    for source in sorted(energy_sources):
        if source.startswith("not available"):
            notes.append(f"Training energy {source}; no estimate is shown in its place.")
    kinds = {m["memory"].get("kind") for m in models.values() if m.get("memory")}
    if "tensor_bytes" in kinds:
        notes.append("CPU inference memory = weights + inputs + peak live activation tensors of one forward at the "
                     "largest latency batch, counted from the storages PyTorch ops allocate; it excludes the "
                     "Python/PyTorch runtime and kernel scratch space.")
    train_kinds = {m["training"].get("memory_kind") for m in models.values() if m.get("training")}
    if "cpu_peak_rss" in train_kinds:
        notes.append("Training peak memory on CPU is the process's peak resident set size, so it includes the "
                     "runtime and the data held in memory, not only the model.")
    return notes
