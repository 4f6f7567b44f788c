"""Fast tests of leankd.report: schema, ratios, markdown, plots, compare, atomic writes."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from leankd.errors import LeanKDError
from leankd.io import append_jsonl
from leankd.report import (
    SCHEMA_VERSION,
    build_report,
    compare_runs,
    compute_ratios,
    load_report,
    render_console,
    render_markdown,
    write_plots,
    write_report,
)
from leankd.report.schema import ReportSchemaError

CLASSES = ["airplane", "automobile", "bird"]


def _latency(b1: float, b64: float, threads: int = 2) -> dict:
    return {
        "cpu": {
            "threads": threads,
            "batch_1": {"median_ms": b1, "p90_ms": b1 * 1.1, "mean_ms": b1 * 1.02, "min_ms": b1 * 0.95, "runs": 30},
            "batch_64": {"median_ms": b64, "p90_ms": b64 * 1.1, "mean_ms": b64 * 1.02, "min_ms": b64 * 0.95, "runs": 10},
        },
        "cuda": None,
    }


def _entry(role, label, arch, acc, f1, params, size_bytes, macs, b1, b64, training=True, history=None):
    return {
        "role": role,
        "label": label,
        "architecture": arch,
        "origin": "trained here",
        "quality": {
            "split": "test",
            "accuracy": acc,
            "macro_f1": f1,
            "loss": 0.4,
            "num_samples": 2000,
            "per_class_accuracy": {c: round(acc + d, 4) for c, d in zip(CLASSES, (0.02, 0.03, -0.05))},
        },
        "cost": {
            "params": params,
            "trainable_params": params,
            "size_mb": size_bytes / 1e6,
            "size_bytes": size_bytes,
            "macs": macs,
            "flops": 2 * macs,
        },
        "latency": _latency(b1, b64),
        "memory": {"inference_peak_mb": 310.0, "inference_delta_mb": 12.0, "kind": "cpu_peak_rss", "batch_size": 64},
        "training": (
            {
                "epochs": 10,
                "wall_time_s": 95.2,
                "samples_per_s": 472.0,
                "peak_memory_mb": 900.0,
                "memory_kind": "cpu_peak_rss",
                "energy_j": None,
                "energy_source": "not available: no RAPL access",
                "loss": "0.9*kd(T=4) + 0.1*ce" if role == "student" else "ce",
                "precision": "fp32",
                "device": "cpu",
            }
            if training
            else None
        ),
        "history": history,
    }


def _run(name="demo", run_dir="runs/demo", threads=2) -> dict:
    return {
        "name": name,
        "run_dir": run_dir,
        "seed": 0,
        "task": "image_classification",
        "dataset": {
            "source": "demo",
            "num_classes": 3,
            "classes": CLASSES,
            "train_size": 4500,
            "val_size": 500,
            "eval_split": "test",
            "eval_size": 2000,
        },
        "environment": {
            "device": "cpu",
            "torch": "2.14.1",
            "python": "3.11.7",
            "cpu": "AMD EPYC 7B13",
            "cpu_threads": threads,
            "gpu": None,
            "platform": "Linux-6.1-x86_64",
        },
    }


def _models(student_acc=0.855, baseline_acc=0.84, histories=False) -> dict:
    h = (lambda r: f"{r}/metrics.jsonl") if histories else (lambda r: None)
    return {
        "teacher": _entry("teacher", "Teacher", "resnet56", 0.90, 0.895, 861_620, 4_000_000, 125_000_000, 5.0, 120.0,
                          training=False, history=h("teacher")),
        "baseline": _entry("baseline", "Baseline student", "resnet8", baseline_acc, 0.835, 78_042, 1_000_000,
                           12_500_000, 1.25, 20.0, history=h("baseline")),
        "student": _entry("student", "KD student", "resnet8", student_acc, 0.85, 78_042, 1_000_000, 12_500_000,
                          1.25, 20.0, history=h("student")),
    }


def _write_histories(run_dir: Path) -> None:
    for role, start in (("teacher", 1.6), ("baseline", 2.0), ("student", 1.9)):
        for ep in range(1, 6):
            append_jsonl(run_dir / role / "metrics.jsonl", {
                "epoch": ep, "lr": 0.1, "train_loss": start / ep, "train_accuracy": 0.3 + 0.1 * ep,
                "val_loss": start / ep + 0.1, "val_accuracy": 0.35 + 0.1 * ep, "epoch_time_s": 9.5,
                "samples_per_s": 470,
            })


def _report(**kw) -> dict:
    return build_report(_run(), _models(**kw), ["energy: not available: no RAPL access", "KD gain measured on one seed"])


# ------------------------------------------------------------------------------------------------------ ratios
def test_ratios_match_hand_values():
    r = compute_ratios(_models())
    s, b = r["vs_teacher"]["student"], r["vs_teacher"]["baseline"]
    assert "teacher" not in r["vs_teacher"]
    assert s["size_x_smaller"] == pytest.approx(4.0)
    assert s["params_x_fewer"] == pytest.approx(861_620 / 78_042, rel=1e-3)
    assert s["macs_x_fewer"] == pytest.approx(10.0)
    assert s["latency_cpu_x_faster_batch_1"] == pytest.approx(4.0)
    assert s["latency_cpu_x_faster_batch_64"] == pytest.approx(6.0)
    assert s["accuracy_retention_pct"] == pytest.approx(95.0)
    assert s["accuracy_delta_points"] == pytest.approx(-4.5)
    assert b["accuracy_retention_pct"] == pytest.approx(100 * 0.84 / 0.90, rel=1e-4)
    assert r["kd_gain_points"] == pytest.approx(1.5)
    assert r["kd_gain_macro_f1_points"] == pytest.approx(1.5)
    assert not any(k.startswith("latency_cuda") for k in s)  # no cuda measured -> no cuda ratios


def test_cuda_ratios_only_when_both_have_cuda():
    models = _models()
    cuda = {"threads": None, "batch_1": {"median_ms": 1.0}, "batch_64": {"median_ms": 4.0}}
    models["teacher"]["latency"]["cuda"] = cuda
    models["student"]["latency"]["cuda"] = {"batch_1": {"median_ms": 0.5}, "batch_64": {"median_ms": 1.0}}
    r = compute_ratios(models)
    assert r["vs_teacher"]["student"]["latency_cuda_x_faster_batch_1"] == pytest.approx(2.0)
    assert r["vs_teacher"]["student"]["latency_cuda_x_faster_batch_64"] == pytest.approx(4.0)
    assert "latency_cuda_x_faster_batch_1" not in r["vs_teacher"]["baseline"]
    rep = build_report(_run(), models, [])  # extra ratio keys pass the schema
    assert rep["ratios"]["vs_teacher"]["student"]["latency_cuda_x_faster_batch_64"] == pytest.approx(4.0)
    md = render_markdown(rep)
    assert "CUDA latency b1" in md


def test_null_inputs_give_null_ratios_never_crash():
    models = _models()
    models["student"]["cost"]["size_bytes"] = None
    models["student"]["latency"] = None
    models["teacher"]["quality"]["accuracy"] = None
    models["baseline"]["quality"] = None
    models["student"]["cost"]["macs"] = 0  # zero divisor -> null, not inf
    r = compute_ratios(models)
    s = r["vs_teacher"]["student"]
    assert s["size_x_smaller"] is None
    assert s["macs_x_fewer"] is None
    assert s["latency_cpu_x_faster_batch_1"] is None and s["latency_cpu_x_faster_batch_64"] is None
    assert s["accuracy_retention_pct"] is None and s["accuracy_delta_points"] is None
    assert s["params_x_fewer"] is not None
    assert r["kd_gain_points"] is None and r["kd_gain_macro_f1_points"] is None
    # no teacher at all, or nothing at all
    r2 = compute_ratios({"student": models["student"]})
    assert all(v is None for v in r2["vs_teacher"]["student"].values())
    assert compute_ratios({}) == {"vs_teacher": {}, "vs_base": {}, "kd_gain_points": None,
                                  "kd_gain_macro_f1_points": None}
    # and the whole report still builds and renders
    rep = build_report(_run(), models, [])
    assert "—" in render_markdown(rep)


# ------------------------------------------------------------------------------------------------------ schema
def test_build_report_fills_header_and_roundtrips():
    rep = _report()
    assert rep["schema_version"] == SCHEMA_VERSION == 1
    assert rep["leankd_version"]
    assert rep["created_utc"].endswith("Z")
    assert list(rep["models"]) == ["teacher", "baseline", "student"]  # order kept
    assert rep["ratios"]["kd_gain_points"] == pytest.approx(1.5)
    json.dumps(rep)  # plain JSON


def test_schema_rejects_unknown_key():
    models = _models()
    models["student"]["quality"]["acuracy"] = 0.5
    with pytest.raises(ReportSchemaError) as ei:
        build_report(_run(), models, [])
    msg = str(ei.value)
    assert "models.student.quality" in msg and "'acuracy'" in msg and "unknown key" in msg
    assert isinstance(ei.value, LeanKDError)
    run = _run()
    run["environment"]["colour"] = "blue"
    with pytest.raises(ReportSchemaError, match=r"run\.environment\.colour"):
        build_report(run, _models(), [])
    run = _run()
    run["dataset"]["image_size"] = [32, 32]  # tasks may describe their data with extra keys
    assert build_report(run, _models(), [])["run"]["dataset"]["image_size"] == [32, 32]
    models = _models()
    models["student"]["latency"]["cpu"]["speed"] = 3
    with pytest.raises(ReportSchemaError, match=r"speed"):
        build_report(_run(), models, [])


def test_schema_rejects_wrong_type():
    models = _models()
    models["teacher"]["cost"]["params"] = "many"
    with pytest.raises(ReportSchemaError) as ei:
        build_report(_run(), models, [])
    msg = str(ei.value)
    assert "models.teacher.cost.params" in msg and "integer" in msg and "'many'" in msg
    models = _models()
    models["student"]["quality"]["accuracy"] = "0.9"  # strict: a string is not a number
    with pytest.raises(ReportSchemaError, match=r"models\.student\.quality\.accuracy"):
        build_report(_run(), models, [])


def test_schema_role_must_match_key():
    models = _models()
    models["student"]["role"] = "baseline"
    with pytest.raises(ReportSchemaError, match="must equal its key"):
        build_report(_run(), models, [])


def test_numpy_like_scalars_are_accepted():
    class Scalar:  # stands in for numpy/torch scalars
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    models = _models()
    models["student"]["cost"]["params"] = Scalar(78_042)
    models["student"]["quality"]["accuracy"] = Scalar(0.855)
    rep = build_report(_run(), models, [])
    assert rep["models"]["student"]["cost"]["params"] == 78_042


# ------------------------------------------------------------------------------------------------------ markdown
def test_markdown_has_columns_values_and_ratios():
    md = render_markdown(_report())
    for label in ("Teacher", "Baseline student", "KD student"):
        assert label in md
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert header.index("Teacher") < header.index("Baseline student") < header.index("KD student")
    for acc in ("90.00", "84.00", "85.50"):
        assert acc in md
    assert "×" in md
    assert "4.00×" in md  # size and b1 latency
    assert "95.00" in md  # retention
    assert "861,620" in md  # thousands separator
    assert "5.00 / 5.50" in md  # b1 median / p90 in ms
    assert "n/a" in md  # energy not measured
    assert "0.9*kd(T=4) + 0.1*ce" in md
    assert "airplane" in md and "Per-class" in md
    assert "- KD gain measured on one seed" in md
    assert "torch 2.14.1" in md and "seed" in md.lower()


@pytest.mark.parametrize(
    "student_acc, expect, forbid",
    [
        (0.855, "1.50 points above the baseline trained alone with the same budget", ("below", "within 0.1")),
        (0.825, "1.50 points below the baseline trained alone", ("above", "within 0.1")),
        (0.8404, "within 0.1 points of the baseline", ("points above", "points below")),
    ],
)
def test_kd_sentence_follows_the_sign(student_acc, expect, forbid):
    md = render_markdown(_report(student_acc=student_acc))
    section = md.split("## Distillation gain", 1)[1].split("##", 1)[0]
    assert expect in section
    for word in forbid:
        assert word not in section
    assert "one seed" in section  # single-seed caveat
    assert "standard error" in section


def test_kd_sentence_when_not_available():
    models = _models()
    del models["baseline"]
    md = render_markdown(build_report(_run(), models, []))
    assert "not available" in md.split("## Distillation gain", 1)[1]


def test_markdown_links_only_existing_plots(tmp_path):
    rep = _report()
    assert "![" not in render_markdown(rep, run_dir=tmp_path)
    (tmp_path / "quality_vs_macs.png").write_bytes(b"x")
    md = render_markdown(rep, run_dir=tmp_path)
    assert "(quality_vs_macs.png)" in md and "curves.png" not in md


def test_console_table_has_all_columns():
    from rich.console import Console

    table = render_console(_report())
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    for label in ("Teacher", "Baseline student", "KD student", "accuracy", "861,620"):
        assert label in text


# ------------------------------------------------------------------------------------------------------ plots
def test_plots_are_written(tmp_path):
    _write_histories(tmp_path)
    rep = build_report(_run(run_dir=str(tmp_path)), _models(histories=True), [])
    paths = write_plots(rep, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["curves.png", "quality_vs_latency.png", "quality_vs_macs.png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    md = render_markdown(rep, run_dir=tmp_path)
    for n in names:
        assert f"({n})" in md


def test_plots_skip_missing_data(tmp_path):
    models = _models(histories=True)  # history paths point at files that do not exist
    for e in models.values():
        e["latency"] = None
    (tmp_path / "curves.png").write_bytes(b"stale")
    paths = write_plots(build_report(_run(), models, []), tmp_path)
    assert [p.name for p in paths] == ["quality_vs_macs.png"]
    assert not (tmp_path / "curves.png").exists()  # stale plot removed, so report.md will not link it


# ------------------------------------------------------------------------------------------------------ io / compare
def test_write_and_load_roundtrip_atomic(tmp_path):
    rep = _report()
    path = write_report(tmp_path / "run", rep)
    assert path == tmp_path / "run" / "report.json"
    assert sorted(os.listdir(tmp_path / "run")) == ["report.json"]  # no leftover temp file
    assert load_report(tmp_path / "run") == rep
    assert load_report(path) == rep  # the json path itself works too


def test_failed_write_keeps_old_report_and_leaves_no_temp(tmp_path, monkeypatch):
    rep = _report()
    write_report(tmp_path, rep)
    before = (tmp_path / "report.json").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    newer = copy.deepcopy(rep)
    newer["notes"] = ["changed"]
    with pytest.raises(OSError):
        write_report(tmp_path, newer)
    monkeypatch.undo()
    assert (tmp_path / "report.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def test_invalid_report_is_never_written(tmp_path):
    rep = _report()
    rep["models"]["teacher"]["cost"]["bogus"] = 1
    with pytest.raises(ReportSchemaError):
        write_report(tmp_path, rep)
    assert not (tmp_path / "report.json").exists()


def test_load_report_missing_dir_names_report_json(tmp_path):
    with pytest.raises(LeanKDError) as ei:
        load_report(tmp_path / "nope")
    msg = str(ei.value)
    assert "report.json" in msg and str(tmp_path / "nope") in msg and "leankd run" in msg


def test_load_report_rejects_newer_schema_and_garbage(tmp_path):
    rep = _report()
    rep["schema_version"] = 2
    (tmp_path / "report.json").write_text(json.dumps(rep))
    with pytest.raises(LeanKDError, match="schema_version 2.*upgrade leankd"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(LeanKDError, match="not readable JSON"):
        load_report(tmp_path)
    bad = _report()
    bad["models"]["student"]["cost"]["params"] = 1.5
    (tmp_path / "report.json").write_text(json.dumps(bad))
    with pytest.raises(LeanKDError, match=r"models\.student\.cost\.params"):
        load_report(tmp_path)


def test_compare_two_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_report(a, build_report(_run(name="run-a"), _models(), []))
    write_report(b, build_report(_run(name="run-b", threads=4), _models(student_acc=0.83), []))
    md = compare_runs([a, b])
    lines = [line for line in md.splitlines() if line.startswith("| run-")]
    assert len(lines) == 6
    assert any("run-a" in line and "student" in line and "+1.50" in line for line in lines)
    assert any("run-b" in line and "student" in line and "-1.00" in line for line in lines)
    assert "CPU thread counts" in md  # different threads -> latency caveat
    with pytest.raises(LeanKDError, match="report.json"):
        compare_runs([a, tmp_path / "missing"])


SER = {"name": "ser", "higher_is_better": False, "label": "sequence error rate (greedy)", "also": ["ter"]}


def _ser_report(name: str, student_ser: float, student_acc: float, baseline_ser: float = 0.35) -> dict:
    """A seq2seq-like run judged by its sequence error rate (lower is better); accuracy is set to disagree."""
    run = _run(name=name)
    run["dataset"]["primary_metric"] = SER
    models = _models(student_acc=student_acc)
    for role, ser in (("teacher", 0.2), ("baseline", baseline_ser), ("student", student_ser)):
        models[role]["quality"]["ser"] = ser
    return build_report(run, models, [])


def test_compare_picks_the_best_student_on_a_lower_is_better_primary_metric(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_report(a, _ser_report("run-a", student_ser=0.30, student_acc=0.87))  # more accurate, more errors
    write_report(b, _ser_report("run-b", student_ser=0.25, student_acc=0.80))
    md = compare_runs([a, b])
    assert md.splitlines()[0].startswith("| run | role | architecture | primary metric | primary (x100) | accuracy (%) |")
    assert "KD gain on the primary metric (points, + = better)" in md.splitlines()[0]
    student = {line.split(" | ")[0][2:]: line for line in md.splitlines() if "| student |" in line}
    assert "| ser (lower is better) | 30.00 | 87.00 |" in student["run-a"] and student["run-a"].endswith("| +5.00 |")
    assert "| ser (lower is better) | 25.00 | 80.00 |" in student["run-b"] and student["run-b"].endswith("| +10.00 |")
    assert ("Best KD student on sequence error rate (greedy) (lower is better): run-b at 25.00 % (of 2 runs)."
            in md)
    assert "different primary metrics" not in md

    # the same two runs judged by accuracy (higher is better) pick the other one
    for d, rep in ((a, _ser_report("run-a", 0.30, 0.87)), (b, _ser_report("run-b", 0.25, 0.80))):
        del rep["run"]["dataset"]["primary_metric"]
        write_report(d, build_report(rep["run"], rep["models"], []))
    md = compare_runs([a, b])
    assert "Best KD student on accuracy (higher is better): run-a at 87.00 % (of 2 runs)." in md
    assert "primary metric" not in md.splitlines()[0]


def test_compare_still_reads_reports_without_a_primary_metric(tmp_path):
    """Reports written before tasks declared a primary metric: accuracy stands in, and the KD gain is kd_gain_points."""
    old = build_report(_run(name="old"), _models(), [])
    old["run"]["dataset"].pop("primary_metric", None)
    old["ratios"] = {k: v for k, v in old["ratios"].items() if k not in ("primary_metric", "kd_gain_primary_points")}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(old))
    write_report(tmp_path / "older", build_report(_run(name="older"), _models(student_acc=0.86), []))
    md = compare_runs([tmp_path / "old", tmp_path / "older"])
    assert any(line.startswith("| old | student |") and line.endswith("| +1.50 |") for line in md.splitlines())
    assert "Best KD student on accuracy (higher is better): older at 86.00 % (of 2 runs)." in md

    write_report(tmp_path / "seq", _ser_report("seq", student_ser=0.25, student_acc=0.80))
    md = compare_runs([tmp_path / "old", tmp_path / "seq"])
    assert any(line.startswith("| old | student | resnet8 | accuracy (higher is better) | 85.50 | 85.50 |")
               for line in md.splitlines())
    assert ("Runs are judged by different primary metrics (accuracy (higher is better), ser (lower is better)): "
            "their primary values and KD gains are not directly comparable.") in md
    assert "Best KD student" not in md  # one run per metric: nothing to pick between


def test_quality_plots_follow_the_primary_metric(tmp_path, monkeypatch):
    from leankd.report import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    write_plots(_ser_report("seq", student_ser=0.25, student_acc=0.80), tmp_path)
    ax = figures["quality_vs_macs.png"].axes[0]
    assert ax.get_ylabel() == "sequence error rate (greedy) (%, lower is better)"
    assert ax.get_title() == "seq: sequence error rate (greedy) vs MACs"
    ys = sorted(float(c.lines[0].get_ydata()[0]) for c in ax.containers)  # every point is an errorbar
    assert ys == pytest.approx([20.0, 25.0, 35.0])  # teacher, KD student, baseline: their error rates

    figures.clear()
    write_plots(_report(), tmp_path)  # no primary metric named: accuracy, as before
    ax = figures["quality_vs_macs.png"].axes[0]
    assert ax.get_ylabel() == "accuracy (%)" and ax.get_title() == "demo: accuracy vs MACs"


def test_artifacts_are_compared_with_the_model_they_came_from():
    import copy

    models = _models()
    art = copy.deepcopy(models["student"])
    art["role"] = "student_int8"
    art["cost"]["size_bytes"] = art["cost"]["size_bytes"] // 4
    art["quality"]["accuracy"] = models["student"]["quality"]["accuracy"] - 0.012
    art["artifact"] = {"target": "int8-static", "base_role": "student", "format": "onnx", "path": "compressed/x.onnx",
                       "accuracy_drop_points": 1.2, "max_drop_points": 1.0, "flagged": True}
    models["student_int8"] = art
    rep = build_report(_run(), models, [])
    vb = rep["ratios"]["vs_base"]["student_int8"]
    assert vb["size_x_smaller"] == pytest.approx(4.0, rel=1e-3)
    assert vb["accuracy_delta_points"] == pytest.approx(-1.2)
    assert list(rep["ratios"]["vs_base"]) == ["student_int8"]
    bad = copy.deepcopy(models)
    bad["student_int8"]["artifact"]["colour"] = 1
    with pytest.raises(ReportSchemaError, match="colour"):
        build_report(_run(), bad, [])


def _regression_models(declared_extra_pearson: bool = False) -> dict:
    """Text-regression entries: Pearson r / Spearman / MSE and no accuracy (or, with `declared_extra_pearson`, the
    classification entries of `_models` that also carry a Pearson r)."""
    models = _models()
    for i, e in enumerate(models.values()):
        if declared_extra_pearson:
            e["quality"]["pearson"] = 0.5
            continue
        e["quality"].update(accuracy=None, macro_f1=None, per_class_accuracy=None, pearson=0.8 + 0.02 * i,
                            spearman=0.79, mse=0.4)
    return models


@pytest.mark.parametrize("declared", [{"name": "pearson", "higher_is_better": True, "label": "Pearson r"},
                                      {"name": "spearman", "higher_is_better": True, "label": "Spearman rho"},
                                      None])
def test_regression_layout_reads_the_declared_primary_metric(declared):
    """A regression report is recognised by the primary metric it declares; a report written before tasks declared
    one (None) still renders as regression from its quality keys."""
    run = _run()
    if declared:
        run["dataset"]["primary_metric"] = declared
    md = render_markdown(build_report(run, _regression_models(), []))
    assert "| Pearson r (x100) (test) |" in md and "| Spearman (x100) |" in md and "| MSE |" in md
    assert "| Pearson r retention (%) |" in md and "accuracy (%)" not in md


def test_declared_accuracy_wins_over_a_stray_pearson_key():
    """Declared accuracy: the accuracy layout, even where an entry carries a Pearson r the old key guess read as a
    regression report."""
    run = _run()
    run["dataset"]["primary_metric"] = {"name": "accuracy", "higher_is_better": True, "label": "accuracy"}
    md = render_markdown(build_report(run, _regression_models(declared_extra_pearson=True), []))
    assert "| accuracy (%) (test) |" in md and "| accuracy retention (%) |" in md
    assert "Pearson r (x100)" not in md
