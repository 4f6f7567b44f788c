"""The search report claims no more than its numbers hold: a first rung at chance (or within noise) is called
out, selection bias is stated as a possibility with its evidence, the teacher's origin is read from the base run,
and a CPU latency the timer marked unreliable is never selected on. Hand-built reports and trials: no training."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import optuna
import pytest

from leankd.recipe import parse_recipe
from leankd.search.evidence import first_rung_sentence, first_rung_signal, selection_bias_sentence, teacher_origin
from leankd.search.metrics import candidate_metrics, latency_fallback_note, latency_noise, reference_ms_per_mac

BASE = {"teacher": {"model": "resnet14"}, "student": {"model": "cifar_resnet", "kwargs": {"depth": 8, "width": 8}}}


# --------------------------------------------------------------------------------------- first rung vs chance
def test_first_rung_at_chance_is_called_noise_and_a_longer_rung_is_suggested():
    # 10 classes, 200 validation examples: chance 10%, SE sqrt(0.1 * 0.9 / 200) = 2.121 points -> bound 14.24%
    signal = first_rung_signal([0.09, 0.125, 0.14], num_classes=10, n=200)
    assert signal["chance_bound"] == pytest.approx(0.1 + 2 * math.sqrt(0.09 / 200))
    assert signal["at_chance"] and signal["indistinguishable"]
    text = first_rung_sentence(signal, 0.34, "validation")
    assert text.startswith("Promotion was noise: the first rung's 3 trials are indistinguishable from chance")
    assert "9.00% - 14.00%" in text and "1/10 = 10.00%" in text and "14.24% on 200 examples" in text
    assert "`search.rung_fraction`, now 0.34; e.g. 0.68" in text and "`data.val_fraction`" in text
    # one trial clearly above the bound (15% > 14.24%), and far from the others: the rung tells them apart
    assert not first_rung_signal([0.09, 0.15], num_classes=10, n=200)["at_chance"]
    learned = first_rung_signal([0.10, 0.45, 0.60], num_classes=10, n=200)
    assert not learned["indistinguishable"] and first_rung_sentence(learned, 0.34, "validation") is None


def test_first_rung_spread_within_noise_is_called_out():
    # mean 0.7 on 100 examples: SE of a difference sqrt(2 * 0.21 / 100) = 6.48 points, x2 = 12.96 points
    values = [0.65, 0.70, 0.75]
    signal = first_rung_signal(values, num_classes=2, n=100)
    assert signal["noise"] == pytest.approx(2 * math.sqrt(2 * 0.7 * 0.3 / 100))
    assert not signal["at_chance"] and signal["within_noise"]
    text = first_rung_sentence(signal, 0.25, "test")
    assert "cannot be told apart by accuracy" in text and "differ by 10.00 points, within the 12.96 points" in text
    assert "`search.rung_fraction`, now 0.25; e.g. 0.5" in text and "val_fraction" not in text
    assert not first_rung_signal([0.55, 0.70, 0.85], num_classes=2, n=100)["within_noise"]  # 30 points apart
    assert first_rung_signal([0.5], 2, 100) is None and first_rung_signal([0.5, 0.6], None, 100) is None


# ------------------------------------------------------------------------------------------ selection bias
def test_selection_bias_is_a_possibility_with_its_evidence_not_a_fact():
    # fresh seeds 0.80, 0.82: mean 0.81, sd 1.414 points; search time 0.86 -> +5.00 points, 3.5 sd
    text = selection_bias_sentence(0.86, [0.80, 0.82], [0, 1])
    assert "+5.00 points from the fresh seeds' mean (81.00% +- 1.41" in text and "(mean of seeds 0, 1)" in text
    assert "3.5 times their standard deviation" in text
    assert "Selection bias is possible" in text and "`search.confirm_seeds`" in text
    assert "selection bias)" not in text and "lucky ones" not in text  # no verdict
    assert "no sign of selection bias" in selection_bias_sentence(0.81, [0.80, 0.82], [0])
    below = selection_bias_sentence(0.70, [0.80, 0.82], [0])
    assert "below them" in below and "Selection bias is possible" not in below
    assert "one fresh seed gives no spread" in selection_bias_sentence(0.90, [0.80], [0])


# ------------------------------------------------------------------------------------------- teacher origin
def test_teacher_origin_comes_from_the_base_run():
    loaded = {"models": {"teacher": {"origin": "checkpoint: /w/teacher.safetensors"}}}
    text = teacher_origin(loaded, "/w/teacher.safetensors")
    assert "loaded from `teacher.checkpoint` (/w/teacher.safetensors)" in text and "not trained here" in text
    trained = teacher_origin({"models": {"teacher": {"origin": "trained here"}}}, None)
    assert trained.startswith("The teacher is trained once")


# ------------------------------------------------------------------------------------- unreliable latencies
def _entry(macs: float, ms: float, acc: float = 0.8, reliable: bool | None = None, noise=None) -> dict:
    cpu = {"threads": 2, "batch_1": {"median_ms": ms}}
    if reliable is not None:
        cpu["reliable"] = reliable
    if noise is not None:
        cpu["noise"] = noise
    return {"quality": {"accuracy": acc}, "cost": {"macs": macs, "params": 1000}, "latency": {"cpu": cpu}}


def _base_report() -> dict:
    # teacher 40 MMACs in 8 ms, baseline 4 MMACs in 1 ms: 2e-7 and 2.5e-7 ms/MAC; the KD student's timing is noise
    return {"models": {"teacher": _entry(40e6, 8.0), "baseline": _entry(4e6, 1.0, reliable=True),
                       "student": _entry(4e6, 700.0, reliable=False, noise=["rounds disagree"])}}


def test_unreliable_latency_is_estimated_from_macs_with_a_note():
    base = _base_report()
    scales = reference_ms_per_mac(base, ["latency.cpu.batch_1.median_ms"])
    assert scales == {"latency.cpu.batch_1.median_ms": pytest.approx((2e-7 + 2.5e-7) / 2)}  # the noisy one left out
    assert latency_noise(base["models"]["teacher"]) is None  # no flag (an older report): reliable
    assert latency_noise(base["models"]["student"]) == ["rounds disagree"]
    trial = {"models": {"student": _entry(2e6, 704.0, reliable=False, noise=["spread 90%", "load 3.2"])}}
    got = candidate_metrics(trial, [], ["accuracy", "latency_ms", "macs"], ms_per_mac=scales)
    assert got == {"accuracy": 0.8, "latency_ms": pytest.approx(2e6 * 2.25e-7), "macs": 2e6}  # 0.45 ms, not 704
    note = latency_fallback_note(trial, [], ["latency_ms"], ms_per_mac=scales)
    assert note == "CPU latency unreliable (spread 90%; load 3.2): latency_ms estimated from MACs x 2.25e-07 " \
                   "ms/MAC (the base run's reliably timed models)"
    # without a reliably timed reference: left out, never the noisy number
    assert candidate_metrics(trial, [], ["latency_ms"])["latency_ms"] is None
    assert "latency_ms left out (no reliably timed model" in latency_fallback_note(trial, [], ["latency_ms"])
    # a reliable timing is used as measured, with no note
    fine = {"models": {"student": _entry(2e6, 0.9, reliable=True)}}
    assert candidate_metrics(fine, [], ["latency_ms"], ms_per_mac=scales) == {"latency_ms": 0.9}
    assert latency_fallback_note(fine, [], ["latency_ms"], ms_per_mac=scales) is None
    assert latency_fallback_note(trial, [], ["accuracy", "macs"], ms_per_mac=scales) is None  # latency not asked


def _search(tmp_path: Path, **search):
    """A Search whose base run is a hand-built report.json. The tests read it with plain json (monkeypatched
    load_report): `latency.cpu.reliable` / `noise` come from the timer's own change to the report schema."""
    from leankd.search.runner import Search

    r = parse_recipe({**BASE, "search": {"space": {"student.kwargs.width": {"choices": [4, 8, 16]}}, **search}})
    s = Search(r, tmp_path, quiet=True)
    (tmp_path / "base").mkdir(parents=True, exist_ok=True)
    report = {"schema_version": 1, "run": {"dataset": {"num_classes": 10, "val_size": 200, "eval_size": 200}},
              **_base_report()}
    report["models"]["teacher"]["origin"] = "checkpoint: /w/teacher.safetensors"
    (tmp_path / "base" / "report.json").write_text(json.dumps(report))
    return s


def test_a_latency_constraint_judges_the_estimate_not_the_noise(tmp_path, monkeypatch):
    """A tiny student timed at 704 ms on a busy machine would break `latency_ms <= 5`; its MACs say ~0.45 ms."""
    import leankd.search.scoring as scoring

    monkeypatch.setattr(scoring, "load_report", lambda path: json.loads(Path(path).read_text()))
    s = _search(tmp_path, constraints=[{"metric": "latency_ms", "max": 5.0}])
    trial = {"models": {"student": _entry(2e6, 704.0, reliable=False, noise=["spread 90%"])}}
    metrics, note = s._measure(trial, {}, tmp_path / "nowhere")
    assert metrics["latency_ms"] == pytest.approx(0.45) and s._violations(metrics) == [pytest.approx(0.45 - 5.0)]
    assert note.startswith("CPU latency unreliable (spread 90%): latency_ms estimated from MACs")
    # the same trial, measured as today (no flag): the noisy number breaks the constraint
    plain = copy.deepcopy(trial)
    del plain["models"]["student"]["latency"]["cpu"]["reliable"]
    assert s._violations(s._measure(plain, {}, tmp_path / "nowhere")[0]) == [pytest.approx(699.0)]


def test_search_report_says_what_its_numbers_cannot_show(tmp_path, monkeypatch):
    """Rows as the study holds them: a first rung at chance, one trial with a noisy latency, a loaded teacher."""
    import leankd.search.report as report
    import leankd.search.scoring as scoring

    loader = lambda path: json.loads(Path(path).read_text())  # noqa: E731 - hand-built reports skip the schema
    monkeypatch.setattr(report, "load_report", loader)
    monkeypatch.setattr(scoring, "load_report", loader)
    s = _search(tmp_path, objectives=[{"metric": "accuracy", "direction": "maximize"},
                                      {"metric": "latency_ms", "direction": "minimize"}], rung_fraction=0.25)
    note = "CPU latency unreliable (spread 90%): latency_ms estimated from MACs x 2.25e-07 ms/MAC (the base run's " \
           "reliably timed models)"
    s.studies = {rung: optuna.create_study(directions=["maximize", "minimize"]) for rung in ("explore", "full",
                                                                                            "confirm")}
    for width, val, latency in ((4, 0.11, 0.45), (8, 0.09, 0.9), (16, 0.125, 1.8)):
        attrs = {"params": {"student.kwargs.width": width}, "violations": [],
                 "metrics": {"accuracy": val, "val_accuracy": val, "latency_ms": latency, "macs": width * 5e5}}
        if width == 4:
            attrs["latency_note"] = note
        s.studies["explore"].add_trial(optuna.trial.create_trial(values=[val, latency], user_attrs=attrs))
    monkeypatch.setattr(report, "plot_fronts", lambda rows, search, base: [])
    summary = s.write_report()
    md = (tmp_path / "search_report.md").read_text()
    assert summary["first_rung_signal"]["at_chance"] and summary["first_rung_signal"]["split"] == "validation"
    assert "Promotion was noise: the first rung's 3 trials are indistinguishable from chance" in md
    assert "`search.rung_fraction`, now 0.25; e.g. 0.5" in md
    assert "loaded from `teacher.checkpoint` (/w/teacher.safetensors)" in md and "teacher is trained once" not in md
    assert f"explore trial 0: {note}" in md and "base student: CPU latency unreliable (rounds disagree)" in md
    assert "| explore 0 | 11.00% |" in md and "0.45 (est. from MACs)" in md
    board = (tmp_path / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| explore | 0 |"))
    assert "0.45 (est. from MACs)" in row and note in row
    assert "(est. from MACs)" not in next(line for line in board.splitlines() if line.startswith("| explore | 1 |"))
    assert summary["trials"][0]["latency_note"] == note
    # the cross-run leaderboard shows the search's estimate as such, and a run's noisy timing as unreliable
    from leankd.search.leaderboard import collect, to_markdown

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps({"models": _base_report()["models"]}))
    monkeypatch.setattr("leankd.search.leaderboard.load_report", loader)
    table = to_markdown(collect([tmp_path, tmp_path / "run"]))
    assert "0.45 ms (est. from MACs)" in table and "700 ms (unreliable)" in table
    assert "CPU latency unreliable: rounds disagree" in table


def test_two_workers_creating_the_schema_at_once_retry(monkeypatch, tmp_path):
    """Two workers opening a new PostgreSQL study race to create Optuna's tables and enum types; the loser gets
    IntegrityError or "type ... already exists" (psycopg DuplicateObject) and must retry, not stop the search."""
    import optuna

    from leankd.search import study

    class ProgrammingError(Exception):
        pass

    calls = []

    def racing_storage(url):
        calls.append(url)
        if len(calls) == 1:
            raise ProgrammingError('(psycopg.errors.DuplicateObject) type "studydirection" already exists')
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing_storage)
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    assert study.open_storage(tmp_path, "postgresql://u@h/db") == "storage" and len(calls) == 2
