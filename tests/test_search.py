"""`leankd search`: space parsing and its errors, Pareto fronts and promotion against hand-made points, and tiny
real searches - the report's numbers equal the trials' report.json files, a killed search resumes without losing
a finished trial, two worker processes share one study."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from leankd.cli import app
from leankd.errors import RecipeError
from leankd.recipe import parse_recipe
from leankd.search.pareto import (crowding_distance, dominates, non_dominated_sort, pareto_front,
                                  select_for_promotion)
from leankd.search.space import apply_params, check_space, decode_choice, distribution, encode_choice

from test_pipeline import make_image_folder

runner = CliRunner()
BASE = {"teacher": {"model": "resnet14"}, "student": {"model": "cifar_resnet", "kwargs": {"depth": 8, "width": 8}}}


def _recipe(space: dict, **search) -> object:
    return parse_recipe({**BASE, "search": {"space": space, **search}})


# ------------------------------------------------------------------------------------------------ the space
def test_space_applies_dotted_paths_choices_and_loss_family():
    r = _recipe({"distill.temperature": {"low": 1, "high": 8, "log": True},
                 "student.kwargs.width": {"choices": [4, 8]},
                 "compress.targets": {"choices": [[], ["int8-static"]]},
                 "distill.family": {"choices": ["kd", "soft_ce", "mse"]}})
    check_space(r, r.search)
    base = r.model_dump(exclude={"search"}, exclude_none=True)
    raw = apply_params(base, {"distill.temperature": 2.5, "student.kwargs.width": 4,
                              "compress.targets": ["int8-static"], "distill.family": "soft_ce", "distill.alpha": 0.7})
    trial = parse_recipe(raw)
    assert trial.student.kwargs == {"depth": 8, "width": 4} and trial.compress.targets == ["int8-static"]
    assert [(t.kind, t.weight, getattr(t, "temperature", None)) for t in trial.distill.loss] == [("soft_ce", 0.7, 2.5),
                                                                                ("ce", pytest.approx(0.3), None)]
    assert not hasattr(parse_recipe(apply_params(base, {"distill.family": "mse"})).distill.loss[0], "temperature")
    assert base["distill"].get("loss") is None  # the starting recipe is not changed
    dim = r.search.space["compress.targets"]
    assert distribution(dim).choices == ("[]", '["int8-static"]')  # Optuna keeps plain scalars
    assert decode_choice(dim, encode_choice(["int8-static"])) == ["int8-static"]
    ints = distribution(r.search.space["student.kwargs.width"])
    assert isinstance(ints, optuna.distributions.CategoricalDistribution)
    assert isinstance(distribution(_recipe({"train.epochs": {"low": 2, "high": 6}}).search.space["train.epochs"]),
                      optuna.distributions.IntDistribution)


def test_space_with_a_list_index_path():
    r = parse_recipe({**BASE, "distill": {"features": [{"kind": "hint", "pairs": [["layer1", "layer1"]]}]},
                      "search": {"space": {"distill.features.0.weight": {"low": 0.1, "high": 10, "log": True}}}})
    check_space(r, r.search)
    raw = apply_params(r.model_dump(exclude={"search"}, exclude_none=True), {"distill.features.0.weight": 3.0})
    assert parse_recipe(raw).distill.features[0].weight == 3.0


@pytest.mark.parametrize("space,match", [
    ({"teacher.kwargs.width": {"choices": [1, 2]}}, r"search\.space\.teacher\.kwargs\.width: teacher cannot be searched"),
    ({"seed": {"choices": [1, 2]}}, r"search\.space\.seed: seed cannot be searched"),
    ({"distill.temprature": {"low": 1, "high": 4}}, r"search\.space\.distill\.temprature = 1 makes a recipe"),
    ({"distill.alpha": {"low": 0.5, "high": 1.5}}, r"search\.space\.distill\.alpha = 1\.5 makes a recipe"),
    ({"student.kwargs.depth": {"choices": [8, 9]}}, r"search\.space\.student\.kwargs\.depth = 9: the student cannot "
                                                     r"be built: .*6n\+2"),
    ({"student.kwargs.widht": {"choices": [4]}}, r"search\.space\.student\.kwargs\.widht = 4: the student cannot be "
                                                  r"built: .*widht"),
    ({"distill.family": {"choices": ["kd", "cosine"]}}, r"search\.space\.distill\.family: choices must be loss "
                                                        r"kinds that learn from the teacher, among .*'dkd'.*"
                                                        r"\(got 'cosine'\)"),
    ({"distill.features.0.weight": {"low": 1, "high": 2}}, r"search\.space\.distill\.features\.0\.weight: .*0 "
                                                           r"entries"),
])
def test_bad_space_names_the_field(space, match):
    r = _recipe(space)
    with pytest.raises(RecipeError, match=match):
        check_space(r, r.search)


def test_bad_dimension_and_metric_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"search\.space\.distill\.temperature.*low \(8\) must be below high"):
        _recipe({"distill.temperature": {"low": 8, "high": 1}})
    with pytest.raises(RecipeError, match=r"search\.space\.train\.lr.*log: true needs low > 0"):
        _recipe({"train.lr": {"low": 0, "high": 1, "log": True}})
    recipe = {**BASE, "search": {"space": {"distill.alpha": {"low": 0.1, "high": 0.9}},
                                 "objectives": [{"metric": "acuracy", "direction": "maximize"}]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "search.objectives[0].metric: unknown metric 'acuracy'" in result.output
    path.write_text(yaml.safe_dump({**BASE, "search": {"space": {"teacher.train.epochs": {"low": 1, "high": 3}}}}))
    result = runner.invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "s")])
    assert result.exit_code == 2 and "search.space.teacher.train.epochs" in result.output
    path.write_text(yaml.safe_dump(BASE))
    result = runner.invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "s")])
    assert result.exit_code == 2 and "no search: section" in result.output


def test_candidate_is_the_deployed_artifact_when_the_trial_compresses():
    from leankd.search.metrics import candidate_metrics

    report = {"models": {
        "student": {"quality": {"accuracy": 0.80}, "cost": {"macs": 1e6, "params": 1000, "size_mb": 4.0},
                    "latency": {"cpu": {"batch_1": {"median_ms": 2.0}}}, "training": {"wall_time_s": 30.0}},
        "student_int8_static": {"quality": {"accuracy": 0.79}, "cost": {"macs": 1e6, "params": 1000, "size_mb": 1.0},
                                "latency": {"cpu": {"batch_1": {"median_ms": 0.5}}}, "training": None}}}
    names = ["accuracy", "size_mb", "latency_ms", "macs", "train_time_s", "quality.accuracy"]
    assert candidate_metrics(report, ["int8-static"], names) == {
        "accuracy": 0.79, "size_mb": 1.0, "latency_ms": 0.5, "macs": 1e6, "train_time_s": 30.0,
        "quality.accuracy": 0.79}
    assert candidate_metrics(report, [], names)["size_mb"] == 4.0
    # a target that failed to build: the fp32 student is what would ship
    assert candidate_metrics(report, ["onnx"], ["accuracy"]) == {"accuracy": 0.80}
    with pytest.raises(RecipeError, match="unknown metric 'sise_mb'"):
        candidate_metrics(report, [], ["sise_mb"])


# ---------------------------------------------------------------------------------------------- the front
def test_pareto_front_of_hand_made_points():
    # (accuracy up, MACs down)
    points = [(0.90, 40.0), (0.85, 10.0), (0.80, 12.0), (0.70, 3.0), (0.85, 10.0), (0.60, 50.0), (None, 1.0)]
    directions = ["maximize", "minimize"]
    assert pareto_front(points, directions) == [0, 1, 3, 4]  # 2 is dominated by 1; 5 by all; None never
    assert dominates(points[1], points[2], directions) and not dominates(points[1], points[4], directions)
    assert not dominates(points[0], points[3], directions) and not dominates(points[3], points[0], directions)
    fronts = non_dominated_sort(points, directions)
    assert fronts[0] == [0, 1, 3, 4] and fronts[1] == [2] and fronts[-1] == [6]
    assert pareto_front([(1.0,), (3.0,), (2.0,)], ["maximize"]) == [1]


def test_promotion_picks_the_non_dominated_and_keeps_the_extremes_when_capped():
    directions = ["maximize", "minimize"]
    points = [(0.5, 1.0), (0.6, 2.0), (0.7, 3.0), (0.71, 3.05), (0.8, 8.0), (0.55, 6.0), (0.65, 9.0)]
    assert select_for_promotion(points, directions, limit=10) == [0, 1, 2, 3, 4]  # never a dominated one (5, 6)
    # crowding by hand (ranges 0.3 and 7): 1 -> 0.2/0.3 + 2/7 = 0.952, 2 -> 0.11/0.3 + 1.05/7 = 0.517,
    # 3 -> 0.1/0.3 + 5/7 = 1.048; the two ends are infinite
    crowd = crowding_distance([points[i] for i in (0, 1, 2, 3, 4)], directions)
    assert crowd[0] == crowd[4] == float("inf")
    assert crowd[1:4] == pytest.approx([0.2 / 0.3 + 2 / 7, 0.11 / 0.3 + 1.05 / 7, 0.1 / 0.3 + 5 / 7])
    assert select_for_promotion(points, directions, limit=3) == [0, 3, 4]  # the ends, then the most isolated
    assert select_for_promotion(points, directions, limit=4) == [0, 1, 3, 4]  # 2 is the most crowded: left out


# ------------------------------------------------------------------------------------------- real searches
def _search_recipe(tmp_path: Path, data: Path, **search) -> Path:
    recipe = {
        "name": "tiny_search", "output_dir": str(tmp_path / "runs"),
        "data": {"source": str(data), "val_fraction": 0.25, "cache_dir": str(tmp_path / "cache")},
        "teacher": {"model": "resnet8", "train": {"epochs": 2}},
        "student": {"model": "cifar_resnet", "kwargs": {"depth": 8, "width": 4}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]},
        "search": {"space": {"student.kwargs.width": {"choices": [2, 4, 8]},
                             "distill.temperature": {"low": 1.0, "high": 6.0}},
                   "trials": 4, "rung_fraction": 0.5, "confirm_top": 1, "confirm_seeds": 1, **search},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), per_class=(12, 6), size=12)


def _report_metrics(run_dir: Path) -> dict:
    """Read a trial's numbers straight from its report.json (independently of leankd.search.metrics)."""
    student = json.loads((run_dir / "report.json").read_text())["models"]["student"]
    return {"accuracy": student["quality"]["accuracy"], "macs": student["cost"]["macs"],
            "params": student["cost"]["params"]}


def test_search_end_to_end_report_numbers_come_from_the_trials(tmp_path, data):
    path = _search_recipe(tmp_path, data, promote_max=4, full_seeds=2)  # no cap: every non-dominated one goes on
    recipe = yaml.safe_load(path.read_text())
    recipe["teacher"].update(cache=True, cache_views=2)  # the teacher's outputs, cached once for all trials
    recipe["search"]["space"]["train.lr"] = {"low": 0.02, "high": 0.1, "log": True}
    path.write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "s"), "--quiet"])
    assert result.exit_code == 0, result.output
    s = tmp_path / "s"
    summary = json.loads((s / "search.json").read_text())
    rows = summary["trials"]
    explore = [r for r in rows if r["rung"] == "explore"]
    assert len(explore) == 4 and all(r["state"] == "complete" for r in explore)
    # every number in the leaderboard is the one in that trial's own report.json
    with open(s / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for line in table:
        if line["state"] != "complete":
            continue
        expected = _report_metrics(s / line["run_dir"])
        for key, value in expected.items():
            assert float(line[key]) == pytest.approx(value, rel=1e-9), (line["run_dir"], key)
    # first rung: half the epochs; the promoted ones are exactly the first rung's non-dominated candidates, by
    # validation accuracy (what the search selects on; the test split is only reported)
    first = json.loads((s / explore[0]["run_dir"] / "report.json").read_text())
    assert first["models"]["student"]["training"]["epochs"] == 1
    history = (s / explore[0]["run_dir"] / "student" / "metrics.jsonl").read_text().splitlines()
    assert explore[0]["metrics"]["val_accuracy"] == json.loads(history[-1])["val_accuracy"]
    points = [(r["metrics"]["val_accuracy"], r["metrics"]["macs"]) for r in explore]
    front = {explore[i]["trial"] for i in pareto_front(points, ["maximize", "minimize"])}
    full = [r for r in rows if r["rung"] == "full"]
    assert {r["source"] for r in full} == front
    seeds_of: dict = {}  # each promoted candidate at the full budget with seeds 0 and 1
    for r in full:
        seeds_of.setdefault(r["source"], []).append(r["seed"])
    assert all(sorted(v) == [0, 1] for v in seeds_of.values()), seeds_of
    assert all(json.loads((s / r["run_dir"] / "report.json").read_text())["models"]["student"]["training"]["epochs"]
               == 2 for r in full)
    # the best full-budget candidate, confirmed with a fresh seed beside a same-budget baseline of the same student
    confirm = summary["confirmations"]
    assert len(confirm) == 1 and confirm[0]["seeds"] == [2]  # fresh: neither full-budget seed
    for r in (r for r in rows if r["rung"] == "confirm"):
        rep = json.loads((s / r["run_dir"] / "report.json").read_text())
        assert rep["models"]["baseline"]["quality"]["accuracy"] == pytest.approx(r["baseline_metrics"]["accuracy"])
        assert rep["models"]["baseline"]["cost"]["macs"] == rep["models"]["student"]["cost"]["macs"]
    c = confirm[0]
    means = {}  # candidate (its first full run) -> (mean val accuracy, macs, mean test accuracy)
    for source in seeds_of:
        runs = sorted((r for r in full if r["source"] == source), key=lambda r: r["trial"])
        assert all(r["state"] == "complete" for r in runs)
        means[runs[0]["trial"]] = (sum(r["metrics"]["val_accuracy"] for r in runs) / 2, runs[0]["metrics"]["macs"],
                                   sum(r["metrics"]["accuracy"] for r in runs) / 2, runs[0]["params"])
    best = max(means, key=lambda k: (means[k][0], -means[k][1]))  # chosen on the seeds' mean, validation
    assert c["full_trial"] == best and c["params"] == means[best][3]
    assert c["search_time_accuracy"] == pytest.approx(means[best][2])
    assert c["gain_points"] == pytest.approx(100 * (c["student_mean"] - c["baseline_mean"]))
    # optuna-dashboard: objectives by name, one attribute per metric and per setting (full-budget trials too), and
    # no Optuna INFO line in the search's own output
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s / "study.journal")))
    assert "objectives" not in recipe["search"]  # the defaults: accuracy (maximized) and MACs
    for rung in ("explore", "full"):
        study = optuna.load_study(study_name=f"tiny_search:{rung}", storage=storage)
        assert study.metric_names == ["accuracy", "macs"]
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            assert t.user_attrs["metric.macs"] == t.user_attrs["metrics"]["macs"]
            assert t.user_attrs["metric.val_accuracy"] == t.user_attrs["metrics"]["val_accuracy"]
            assert {f"setting.{k}": v for k, v in t.user_attrs["params"].items()}.items() <= t.user_attrs.items()
    assert "Trial 0 finished" not in result.output and "[I " not in result.output
    md = (s / "search_report.md").read_text()
    for section in ("## Idea", "## Plan", "## Results", "## Comparison with the baseline", "## Changes",
                    "## Conclusion"):
        assert section in md
    assert f"{100 * c['accuracy_mean']:.2f}%" in md
    assert (s / "pareto_macs.png").stat().st_size > 1000
    # the teacher was trained once (base run) and loaded by every trial
    assert (s / "base" / "teacher" / "model.safetensors").exists()
    origins = {json.loads((s / r["run_dir"] / "report.json").read_text())["models"]["teacher"]["origin"]
               for r in rows if r["state"] == "complete"}
    assert len(origins) == 1 and origins.pop().startswith("checkpoint:")
    # ... and its cached outputs were built once per seed (the views depend on it), whatever each trial's lr
    assert len(list((s / "teacher_cache").glob("*.logits.npy"))) == 3  # seeds 0 (explore, full), 1 (full), 2
    # ... and every run trained and validated on the base run's split, whatever its seed
    assert {yaml.safe_load((s / r["run_dir"] / "recipe.yaml").read_text())["data"]["split_seed"]
            for r in rows if r["run_dir"]} == {0}
    # leaderboard across a search and a run
    out = runner.invoke(app, ["leaderboard", str(s), str(s / "base"), "--out", str(tmp_path / "lb.md")])
    assert out.exit_code == 0, out.output
    board = (tmp_path / "lb.md").read_text()
    assert "explore 0" in board and "Teacher" in board
    bad = runner.invoke(app, ["leaderboard", str(tmp_path)])
    assert bad.exit_code == 2 and "neither a run directory" in bad.output


def test_killed_search_resumes_without_losing_a_finished_trial_or_repeating_one(tmp_path, data):
    """Killed in its second trial: on resume, the cut-off trial is re-run from its checkpoint, and the new trials
    are new settings (a fresh sampler seeded as before would propose the first trial's settings again)."""
    path = _search_recipe(tmp_path, data, confirm_top=0, promote_max=1)
    recipe = yaml.safe_load(path.read_text())
    recipe["train"]["epochs"] = 4  # first rung: 2 epochs, so the killed trial has a checkpoint to resume from
    path.write_text(yaml.safe_dump(recipe))
    s = tmp_path / "s"
    cmd = [sys.executable, "-m", "leankd.cli", "search", str(path), "--run-dir", str(s), "--quiet"]
    killed = subprocess.run(cmd + ["--kill-after-trials", "1"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s / "study.journal")))
    before = optuna.load_study(study_name="tiny_search:explore", storage=storage).trials
    finished = {t.number: t.values for t in before if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(finished) == 1 and before[-1].state == optuna.trial.TrialState.RUNNING
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = optuna.load_study(study_name="tiny_search:explore", storage=storage).trials
    for number, values in finished.items():  # finished trials kept, not re-run
        assert after[number].values == values
    killed_trial = after[len(finished)]
    assert killed_trial.state == optuna.trial.TrialState.FAIL and killed_trial.user_attrs["stale"]
    retry = [t for t in after if t.user_attrs.get("retry_of") == killed_trial.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == killed_trial.params  # the same settings, so the same trial directory ...
    report = json.loads((s / retry[0].user_attrs["run_dir"] / "report.json").read_text())
    training = report["models"]["student"]["training"]  # ... whose checkpoint the rerun resumed from
    assert training["epochs"] == 2 and training["energy_source"].startswith("not available: run was resumed")
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    # no settings twice: the four trials that ran are four different settings (the stale trial and its re-run are
    # one job); a proposal that repeated tried settings, if any, was recorded as skipped and never ran
    settings = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(settings)) == 4, settings
    skipped = [t for t in after if t.user_attrs.get("duplicate_of") is not None]
    for t in skipped:
        assert t.state == optuna.trial.TrialState.FAIL and "run_dir" not in t.user_attrs
        assert t.params == after[t.user_attrs["duplicate_of"]].params
    assert len(after) == len(finished) + 1 + 3 + len(skipped)  # finished, killed, its re-run, two new, skipped
    summary = json.loads((s / "search.json").read_text())
    assert sum(r["state"] == "complete" for r in summary["trials"] if r["rung"] == "explore") == 4


def _slower(path: Path) -> Path:
    """A base run long enough for a second worker process to start (imports) before the first trials go."""
    recipe = yaml.safe_load(path.read_text())
    # the children import torch meanwhile: 5-15 s on a busy 2-core machine. With 30 / 6 epochs the first worker
    # once took all six trials before the second was up (a flaky failure); the window is now about twice as long.
    recipe["teacher"]["train"]["epochs"] = 60
    recipe["train"]["epochs"] = 12
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_two_workers_share_one_study(tmp_path, data):
    path = _slower(_search_recipe(tmp_path, data, trials=6, confirm_top=0, promote_max=1))
    s = tmp_path / "s"
    result = subprocess.run([sys.executable, "-m", "leankd.cli", "search", str(path), "--run-dir", str(s),
                             "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(s / "study.journal")))
    trials = optuna.load_study(study_name="tiny_search:explore", storage=storage).trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes took trials from the one study
    full = optuna.load_study(study_name="tiny_search:full", storage=storage).trials
    assert len(full) == 1  # promoted once, though two workers ran the promotion step


@pytest.fixture(scope="module")
def postgres_url():
    """A private PostgreSQL server for this test module (Debian's postgresql package; .ci/run installs it), or
    LEANKD_TEST_POSTGRES_URL. Skips, saying why, only where no server can be started."""
    import glob
    import shutil

    if os.environ.get("LEANKD_TEST_POSTGRES_URL"):
        yield os.environ["LEANKD_TEST_POSTGRES_URL"]
        return
    pytest.importorskip("psycopg", reason="psycopg (the dev extra) is needed to talk to PostgreSQL")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found[-1]:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; .ci/run installs them)")
    bindir = Path(found[-1]).parent
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="leankd-pg-"))  # not under pytest's tmp: the server's user must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as Debian's postgres user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = 54000 + os.getpid() % 1000
    init = subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "leankd"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    start = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w",
                                      "-o", f"-p {port} -k {root} -c listen_addresses=''", "start"],
                           capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://leankd@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, data, postgres_url):
    path = _slower(_search_recipe(tmp_path, data, trials=6, confirm_top=0, promote_max=1))
    s = tmp_path / "s"
    cmd = [sys.executable, "-m", "leankd.cli", "search", str(path), "--run-dir", str(s), "--quiet",
           "--storage", postgres_url]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in (first, second):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    storage = optuna.storages.RDBStorage(postgres_url)
    trials = optuna.load_study(study_name="tiny_search:explore", storage=storage).trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert not (s / "study.journal").exists()  # the study lives in PostgreSQL only
    summary = json.loads((s / "search.json").read_text())
    assert sum(r["rung"] == "explore" for r in summary["trials"]) == 6


def test_time_budget_counts_full_runs_from_the_training_share_of_a_trial():
    """Only the training grows with epochs: a full-budget run costs a first-rung trial plus the extra epochs; the
    first trials (one-off teacher cache) never stop the search on their own."""
    import time as _time

    from leankd.search.runner import Search

    def search(budget):
        r = parse_recipe({**BASE, "search": {"space": {"train.lr": {"low": 0.01, "high": 0.1}}, "trials": 24,
                                             "time_budget_min": budget, "rung_fraction": 0.375, "promote_max": 5,
                                             "full_seeds": 2, "confirm_top": 1, "confirm_seeds": 3}})
        s = Search(r, Path("unused"), quiet=True)
        s.started = _time.perf_counter()
        return s

    def trial(duration, train):
        return optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={"duration_s": duration,
                                                                         "metrics": {"train_time_s": train}})
    trials = [trial(20.0, 15.0)] * 3
    # a full run: 20 + 15 * (1/0.375 - 1) = 45 s; later: (5 * 2 + 1 * 3 * 2) * 45 = 720 s, + one more trial 20 s
    assert not search(10)._time_left_for_another(trials)  # 740 s > 600 s
    assert search(12.5)._time_left_for_another(trials)  # 740 s <= 750 s
    assert search(1)._time_left_for_another(trials[:2])  # two trials: too early to judge


def test_full_budget_candidates_are_judged_on_their_seeds_mean():
    """Promoted candidates run with full_seeds seeds; the choice of what to confirm and the report's front use
    their mean, where seed 0 alone would choose differently; a candidate with a failed seed is left out."""
    from leankd.search.report import front_rows
    from leankd.search.runner import Search

    r = parse_recipe({**BASE, "search": {"space": {"train.lr": {"low": 0.01, "high": 0.1}}, "full_seeds": 2,
                                         "confirm_top": 1}})
    search = Search(r, Path("unused"), quiet=True)
    study = optuna.create_study(directions=["maximize", "minimize"])
    runs = [({"w": 8}, 0, 0.70), ({"w": 8}, 1, 0.50),  # best at seed 0, mean 0.60
            ({"w": 8, "t": 2}, 0, 0.65), ({"w": 8, "t": 2}, 1, 0.64),  # mean 0.645: the better candidate
            ({"w": 16}, 0, 0.90)]  # its seed 1 failed
    rows = []
    for number, (params, seed, val) in enumerate(runs):
        metrics = {"val_accuracy": val, "accuracy": val - 0.05, "macs": 1e6}
        study.add_trial(optuna.trial.create_trial(values=[val, 1e6], user_attrs={
            "params": params, "seed": seed, "violations": [], "metrics": metrics}))
        rows.append({"rung": "full", "trial": number, "state": "complete", "params": params, "seed": seed,
                     "metrics": metrics, "violations": []})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={
        "params": {"w": 16}, "seed": 1}))
    rows.append({"rung": "full", "trial": 5, "state": "fail", "params": {"w": 16}, "seed": 1, "metrics": {},
                 "violations": None})
    search.studies = {"full": study}
    best = search.best_full_candidates()
    assert [t.number for t in best] == [2]  # the first run of {"w": 8, "t": 2}
    front = front_rows(rows, search, "full")
    assert [f["trial"] for f in front] == [2] and [x["trial"] for x in front[0]["runs"]] == [2, 3]
    assert front[0]["metrics"]["accuracy"] == pytest.approx((0.60 + 0.59) / 2)


def test_a_proposal_that_repeats_tried_settings_is_skipped_and_a_finite_space_runs_out():
    """Settings already in the study are never run again: a repeat is recorded as skipped (not counted, never
    run) and an untried setting is proposed instead; once every setting of a finite space was tried, the first rung
    stops. Multivariate TPE, past its random startup trials, proposes the best tried width again here."""
    from leankd.search.runner import Search
    from leankd.search.study import active

    choices = [2, 4, 8, 16]
    r = _recipe({"student.kwargs.width": {"choices": choices}}, trials=6)
    search = Search(r, Path("unused"), quiet=True)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"student.kwargs.width": optuna.distributions.CategoricalDistribution(choices)}
    for width, state in ((2, "COMPLETE"), (4, "FAIL"), (8, "COMPLETE")):  # 4 was cut off by a kill (stale)
        study.add_trial(optuna.trial.create_trial(
            params={"student.kwargs.width": width}, distributions=dist, state=optuna.trial.TrialState[state],
            values=[0.5, float(width)] if state == "COMPLETE" else None,
            user_attrs={"stale": True} if state == "FAIL" else {}))
    trial, params = search._ask(study)
    assert params == {"student.kwargs.width": 16}  # the one setting not tried
    skipped = [t for t in study.trials if t.user_attrs.get("duplicate_of") is not None]
    assert skipped  # TPE did repeat a tried width
    for t in skipped:  # every repeat points at the earlier trial with its settings, and never ran
        assert t.state == optuna.trial.TrialState.FAIL and t.params["student.kwargs.width"] != 16
        assert t.params == study.trials[t.user_attrs["duplicate_of"]].params
    assert [t.number for t in active(study.trials)] == [0, 2, trial.number]  # the stale one, repeats: not counted
    study.tell(trial.number, [0.6, 16.0])
    before = len(study.trials)
    assert search._ask(study) is None  # 2, 4, 8 and 16 tried: nothing new to propose, and no trial added
    assert len(study.trials) == before and search.space_exhausted == 3


def test_a_requeued_trial_keeps_the_settings_of_the_trial_it_reruns():
    """The job of a trial cut off by a kill runs again with its settings (to resume its checkpoint): not a repeat."""
    from leankd.search.runner import Search
    from leankd.search.study import recover_stale

    r = _recipe({"student.kwargs.width": {"choices": [2, 4, 8, 16]}}, trials=6)
    search = Search(r, Path("unused"), quiet=True)
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial, params = search._ask(study)
    # its worker: this pid with another start time - a process that died, its pid since reused
    study._storage.set_trial_user_attr(trial._trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}:1")
    assert recover_stale(study, lambda msg: None) == 1
    again, same = search._ask(study)
    assert same == params and again.user_attrs["retry_of"] == trial.number
    assert not any(t.user_attrs.get("duplicate_of") is not None for t in study.trials)
    study.tell(again.number, [0.5, 1.0])
    assert search._ask(study)[1] != params  # the next proposal is new settings


def test_space_size_counts_finite_spaces_only():
    from leankd.search.space import setting_key, space_size

    space = _recipe({"student.kwargs.width": {"choices": [2, 4, 8]}, "train.epochs": {"low": 2, "high": 6},
                     "distill.alpha": {"low": 0.1, "high": 0.9, "step": 0.2}}).search.space
    assert space_size(space) == 3 * 5 * 5  # 0.1, 0.3, 0.5, 0.7, 0.9
    space = _recipe({"student.kwargs.width": {"choices": [2, 4]}, "distill.alpha": {"low": 0.1, "high": 0.9}})
    assert space_size(space.search.space) is None  # a continuous range never runs out
    # a stepped value computed twice may differ in its last bit: still the same setting
    assert setting_key({"distill.alpha": 0.1 * 3}) == setting_key({"distill.alpha": 0.3})  # 0.30000000000000004
    assert setting_key({"distill.alpha": 0.5}) != setting_key({"distill.alpha": 0.7})


def test_trial_keys_of_existing_searches_survive_settings_added_later():
    """train.sync_bn / train.accumulate joined the recipe after searches existed: at their defaults they must not move
    a trial's run directory (the key is the hash of the trial recipe as it was before)."""
    import hashlib
    import json

    from leankd.search.runs import trial_key

    before = {"name": "t", "train": {"epochs": 3, "lr": 0.1}, "student": {"model": "resnet8"}}
    old_key = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    now = {**before, "train": {**before["train"], "sync_bn": False, "accumulate": 1}}
    assert trial_key(now) == old_key
    assert trial_key({**before, "train": {**before["train"], "accumulate": 2}}) != old_key
