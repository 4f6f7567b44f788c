"""Runs over seeds (`seeds:` / `leankd run --seeds`): the paired statistics against hand-computed numbers, the
report's seeds block and sentences, the recipe checks, and end to end on the demo data: the teacher trained once,
a single-seed run extended to three seeds without retraining anything it had."""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from leankd.errors import RecipeError
from leankd.models import create_model, load_weights
from leankd.measure.models import prepare_for_measuring
from leankd.pipeline import Pipeline
from leankd.recipe import parse_recipe
from leankd.report import build_report, render_markdown
from leankd.seeds import mean_sd, paired_comparison, seeds_summary, sign_test_p, t_quantile, t_two_sided_p

# published two-sided 95 % critical values of Student's t (any statistics table)
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 30: 2.0423}


# ------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("df,expected", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_p_values_by_hand():
    # df = 2 has the closed form P(|T| <= t) = t / sqrt(t^2 + 2); df = 1 is the Cauchy: 2 atan(t) / pi
    assert t_two_sided_p(1.0, 2) == pytest.approx(1 - 1 / math.sqrt(3), abs=1e-12)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    assert t_two_sided_p(2.0, 5) == pytest.approx(0.1019, abs=1e-4)  # table value
    assert t_two_sided_p(0.0, 7) == pytest.approx(1.0)


def test_sign_test_by_hand():
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)  # all 5 the same way: 2 * (1/2)^5
    assert sign_test_p(2, 1) == pytest.approx(1.0)  # 2 * (1 + 3) / 8 = 1
    assert sign_test_p(6, 1) == pytest.approx(2 * (1 + 7) / 128)
    assert sign_test_p(0, 0) == 1.0


def test_mean_sd_by_hand():
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_sd([0.7]) == (0.7, None)


def test_paired_comparison_by_hand():
    # KD 80, 82, 81 % vs baseline 79, 80, 81 %: differences 1, 2, 0 points; mean 1, sd 1, se 1/sqrt(3)
    p = paired_comparison([0.80, 0.82, 0.81], [0.79, 0.80, 0.81])
    assert p["differences_points"] == [1.0, 2.0, 0.0]
    assert p["mean_points"] == 1.0 and p["sd_points"] == 1.0 and p["n"] == 3 and p["df"] == 2
    half = 4.302653 / math.sqrt(3)
    assert p["ci_low_points"] == pytest.approx(1 - half, abs=1e-4)
    assert p["ci_high_points"] == pytest.approx(1 + half, abs=1e-4)
    assert p["t"] == pytest.approx(math.sqrt(3), abs=1e-4)
    assert p["p_value"] == pytest.approx(1 - math.sqrt(3) / math.sqrt(5), abs=1e-5)  # df 2 closed form
    assert (p["better"], p["worse"], p["ties"]) == (2, 0, 1)
    assert p["sign_p_value"] == pytest.approx(0.5)  # 2 of 2 untied: 2 * (1/2)^2


def test_paired_comparison_of_a_lower_is_better_metric_is_signed_kd_better():
    # false rejections: KD 30, 33, 40 % vs baseline 40, 42, 38 %: KD better by 10 and 9 points, worse by 2
    p = paired_comparison([0.30, 0.33, 0.40], [0.40, 0.42, 0.38], higher_is_better=False)
    assert p["differences_points"] == [10.0, 9.0, -2.0]
    assert p["mean_points"] == pytest.approx(17 / 3, abs=1e-4)
    assert (p["better"], p["worse"], p["ties"]) == (2, 1, 0)
    assert p["t"] > 0
    tie = paired_comparison([0.30], [0.30], higher_is_better=False)
    assert tie["differences_points"] == [0.0] and math.copysign(1, tie["differences_points"][0]) == 1  # not -0.0


def test_paired_comparison_without_spread_or_with_one_seed():
    same = paired_comparison([0.81, 0.82], [0.80, 0.81])  # +1 point both times: sd 0, no t statistic
    assert same["ci_low_points"] == same["ci_high_points"] == pytest.approx(1.0)
    assert same["t"] is None and same["p_value"] is None
    one = paired_comparison([0.9], [0.8])
    assert one["mean_points"] == pytest.approx(10.0) and one["ci_low_points"] is None and one["df"] is None
    with pytest.raises(ValueError, match="one value per seed"):
        paired_comparison([0.9, 0.8], [0.8])


# ------------------------------------------------------------------------------------------------ report
def _entry(role: str, acc: float) -> dict:
    return {"role": role, "architecture": "resnet8", "quality": {"split": "test", "accuracy": acc, "num_samples": 500},
            "cost": {"params": 1000, "size_bytes": 4000, "size_mb": 0.004, "macs": 1_000_000},
            "training": {"epochs": 3, "loss": "ce"}}


def _seeds_report(student: list[float], baseline: list[float]) -> dict:
    values = {"baseline": baseline, "student": student}
    seeds = seeds_summary([0, 1, 2], values, main_seed=0, split_seed=0, metric="accuracy", teacher="once",
                          compared=["student"], note="3 seeds on one split")
    models = {"teacher": _entry("teacher", 0.9), "baseline": _entry("baseline", baseline[0]),
              "student": _entry("student", student[0])}
    return build_report({"name": "s", "seed": 0}, models, [], seeds=seeds)


def test_report_seeds_block_and_sentence_when_the_interval_excludes_zero(tmp_path):
    rep = _seeds_report(student=[0.82, 0.83, 0.85], baseline=[0.80, 0.80, 0.81])  # +2, +3, +4 points
    s = rep["seeds"]
    assert s["roles"]["student"]["mean"] == pytest.approx(statistics.mean([0.82, 0.83, 0.85]), abs=1e-6)
    assert s["roles"]["baseline"]["sd"] == pytest.approx(statistics.stdev([0.80, 0.80, 0.81]), abs=1e-6)
    p = s["paired"]["student"]
    assert p["mean_points"] == pytest.approx(3.0) and p["sd_points"] == pytest.approx(1.0)
    assert p["ci_low_points"] == pytest.approx(3 - 4.302653 / math.sqrt(3), abs=1e-4)  # 0.516 > 0
    md = render_markdown(rep, run_dir=tmp_path)
    assert ("KD student is 3.00 points above the baseline trained alone with the same budget (3 epochs) (mean "
            "paired difference +3.00 points over 3 seeds, 95 % CI [+0.52, +5.48]") in md
    assert "83.33 % vs 80.33 % mean accuracy" in md
    assert "| KD student | 83.33 ± 1.53 | 82.00 | 83.00 | 85.00 |" in md
    assert "| KD student − Baseline student (points) | +3.00 ± 1.00 | +2.00 | +3.00 | +4.00 |" in md
    # t = 3 / (1 / sqrt 3) = 5.196; p (df 2) = 1 - t / sqrt(t^2 + 2) = 0.035; sign test 2 * (1/2)^3 = 0.25
    assert "| KD student vs Baseline student | +3.00 | [+0.52, +5.48] | 5.20 (2), p = 0.035 | 3 / 0 / 0 | 0.250 |" in md
    assert "Measured on one seed" not in md and "one standard error of this difference" not in md


def test_report_sentence_says_within_seed_spread_when_the_interval_holds_zero(tmp_path):
    rep = _seeds_report(student=[0.82, 0.79, 0.83], baseline=[0.80, 0.80, 0.81])  # +2, -1, +2: CI holds 0
    assert rep["seeds"]["paired"]["student"]["ci_low_points"] < 0 < rep["seeds"]["paired"]["student"]["ci_high_points"]
    md = render_markdown(rep, run_dir=tmp_path)
    assert "KD student is within seed spread of the baseline trained alone" in md
    assert "KD better in 2 of 3 seeds, worse in 1" in md
    assert "points above" not in md


def test_identical_differences_are_not_called_a_gain_on_a_zero_width_interval(tmp_path):
    rep = _seeds_report(student=[0.81, 0.81, 0.82], baseline=[0.80, 0.80, 0.81])  # +1 point at each of 3 seeds
    p = rep["seeds"]["paired"]["student"]
    assert p["ci_low_points"] == p["ci_high_points"] == pytest.approx(1.0)  # sd 0: no spread to build a t interval
    assert p["sign_p_value"] == pytest.approx(0.25)  # 3 of 3 better: 2 * (1/2)^3, not below 0.05
    md = render_markdown(rep, run_dir=tmp_path)
    assert "KD student is within seed spread of the baseline trained alone" in md and "points above" not in md


def test_one_seed_report_has_no_seeds_key():
    rep = build_report({"name": "s", "seed": 0}, {"student": _entry("student", 0.8)}, [])
    assert "seeds" not in rep


KWS_PRIMARY = {"name": "frr_at_far", "higher_is_better": False, "label": "false rejections at 1% false alarms",
               "also": ["fa_fr_auc"]}


def _kws_entry(role: str, acc: float, frr: float) -> dict:
    entry = _entry(role, acc)
    entry["quality"].update(frr_at_far=frr, fa_fr_auc=frr / 10, far_target=0.01)
    return entry


def _kws_seeds_report(student_frr: list[float], baseline_frr: list[float]) -> dict:
    """A keyword-mode run over seeds 0, 1, 2 put together by `Pipeline.seeds_block` itself: the main seed's values
    come from its models, the others from `seed_values` as `train_seed` returns them. Accuracy is made to disagree
    with the false-rejection rate (KD always a little more accurate)."""
    from leankd.pipeline import Pipeline

    recipe = parse_recipe(_recipe(seeds=[0, 1, 2]))
    task = SimpleNamespace(info={"primary_metric": KWS_PRIMARY}, primary_metric=lambda: KWS_PRIMARY)
    models = {"teacher": _kws_entry("teacher", 0.97, 0.2), "baseline": _kws_entry("baseline", 0.95, baseline_frr[0]),
              "student": _kws_entry("student", 0.96, student_frr[0])}
    seed_values = {seed: {"baseline": baseline_frr[seed], "student": student_frr[seed]} for seed in (1, 2)}
    seeds = Pipeline.seeds_block(SimpleNamespace(recipe=recipe), task, models, seed_values)
    return build_report({"name": "kws", "seed": 0, "dataset": {"num_classes": 2, "primary_metric": KWS_PRIMARY}},
                        models, [], seeds=seeds)


def test_seeds_block_pairs_the_keyword_primary_metric_with_kd_better_positive(tmp_path):
    # false rejections KD 30, 33, 31 % vs baseline 40, 42, 38 %: KD better by 10, 9, 7 points
    rep = _kws_seeds_report(student_frr=[0.30, 0.33, 0.31], baseline_frr=[0.40, 0.42, 0.38])
    s = rep["seeds"]
    assert (s["metric"], s["higher_is_better"], s["label"]) == ("frr_at_far", False, KWS_PRIMARY["label"])
    assert s["roles"]["student"]["values"] == [0.30, 0.33, 0.31]  # the main seed's from its model's quality block
    p = s["paired"]["student"]
    assert p["differences_points"] == [10.0, 9.0, 7.0] and p["mean_points"] == pytest.approx(26 / 3, abs=1e-4)
    assert (p["better"], p["worse"]) == (3, 0) and p["ci_low_points"] > 0 and p["t"] > 0
    md = render_markdown(rep, run_dir=tmp_path)
    gain = md.split("## Distillation gain", 1)[1].split("##", 1)[0]
    assert ("KD student is 8.67 points better than the baseline trained alone on false rejections at 1% false alarms "
            "(lower is better) with the same budget (3 epochs) (mean paired difference +8.67 points over 3 seeds, "
            "baseline minus KD student as lower is better") in gain
    assert "mean 31.33 % vs 40.00 %" in gain and "Main seed (0): 30.00 % vs 40.00 %." in gain
    assert "pairs accuracy over the seeds" not in gain and "mean accuracy" not in gain
    assert "| model | false rejections at 1% false alarms (%, lower is better) mean ± sd |" in md
    assert "| Baseline student − KD student (points) | +8.67 ± 1.53 | +10.00 | +9.00 | +7.00 |" in md
    assert "| KD student | 31.33 ± 1.53 | 30.00 | 33.00 | 31.00 |" in md

    # KD worse at every seed (false rejections up by 5, 6, 7 points): negative, "worse", never "better"
    worse = _kws_seeds_report(student_frr=[0.45, 0.48, 0.45], baseline_frr=[0.40, 0.42, 0.38])
    p = worse["seeds"]["paired"]["student"]
    assert p["differences_points"] == [-5.0, -6.0, -7.0] and (p["better"], p["worse"]) == (0, 3)
    assert p["ci_high_points"] < 0
    md = render_markdown(worse, run_dir=tmp_path)
    assert "KD student is 6.00 points worse than the baseline trained alone on false rejections" in md
    assert "Accuracy at the main seed (+1.00 points) points the other way" in md


def test_an_older_seeds_block_over_accuracy_still_renders_beside_another_primary_metric(tmp_path):
    """A report written before seeds followed the primary metric: its block pairs accuracy and has no direction."""
    rep = _seeds_report(student=[0.82, 0.83, 0.85], baseline=[0.80, 0.80, 0.81])
    del rep["seeds"]["higher_is_better"], rep["seeds"]["label"]
    md = render_markdown(rep, run_dir=tmp_path)
    assert "83.33 % vs 80.33 % mean accuracy" in md
    rep["run"]["dataset"] = {"primary_metric": KWS_PRIMARY}
    for role, frr in (("baseline", 0.4), ("student", 0.3)):
        rep["models"][role]["quality"]["frr_at_far"] = frr
    rep = build_report(rep["run"], rep["models"], [], seeds=rep["seeds"])
    md = render_markdown(rep, run_dir=tmp_path)
    assert "the Seeds section pairs accuracy over the seeds, not this metric" in md


# ------------------------------------------------------------------------------------------------ recipe
def _recipe(**extra) -> dict:
    return {"teacher": {"model": "resnet8"}, "student": {"model": "resnet8"}, **extra}


def test_recipe_main_seed_is_the_first_unless_given():
    assert parse_recipe(_recipe(seeds=[3, 1])).seed == 3
    assert parse_recipe(_recipe(seeds=[2, 0])).seed == 0  # the default seed 0 stays main: its run is extended
    assert parse_recipe(_recipe(seed=1, seeds=[3, 1])).seed == 1
    with pytest.raises(RecipeError, match=r"seed is 5 but seeds is \[0, 1\].*add 5 to seeds"):
        parse_recipe(_recipe(seed=5, seeds=[0, 1]))
    with pytest.raises(RecipeError, match=r"seeds lists \[1\] more than once"):
        parse_recipe(_recipe(seeds=[1, 2, 1]))
    with pytest.raises(RecipeError, match="seeds is empty"):
        parse_recipe(_recipe(seeds=[]))
    with pytest.raises(RecipeError, match="seeds_teacher"):
        parse_recipe(_recipe(seeds=[0, 1], seeds_teacher="always"))


# ------------------------------------------------------------------------------------------------ end to end
def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leankd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_seeds_end_to_end_teacher_once_and_an_existing_run_extended(tmp_path):
    recipe = {"name": "tiny", "output_dir": str(tmp_path / "runs"),
              "data": {"source": "demo", "limit_train": 48, "limit_test": 24, "val_fraction": 0.25,
                       "cache_dir": str(tmp_path / "cache")},
              "teacher": {"model": "resnet8", "train": {"epochs": 1}}, "student": {"model": "resnet8"},
              "train": {"epochs": 1, "batch_size": 16},
              "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"

    first = _cli("run", path, "--run-dir", run_dir, "--quiet")  # an ordinary one-seed run
    assert first.returncode == 0, first.stderr
    kept = {stage: _hashes(run_dir / stage) for stage in ("teacher", "baseline", "student")}
    assert "seeds" not in json.loads((run_dir / "report.json").read_text())

    out = _cli("run", path, "--run-dir", run_dir, "--quiet", "--seeds", "0,1,2")
    assert out.returncode == 0, out.stderr
    log = out.stdout
    # the teacher and seed 0's students are reused byte for byte; seeds 1 and 2 train their own two students
    for stage in ("teacher", "baseline", "student"):
        assert f"{stage}: reusing" in log
        assert _hashes(run_dir / stage) == kept[stage]
    assert "teacher: training" not in log
    assert log.count("baseline: training") == 2 and log.count("student: training") == 2
    for seed in (1, 2):
        assert (run_dir / f"seed{seed}/baseline/model.safetensors").is_file()
        assert (run_dir / f"seed{seed}/student/model.safetensors").is_file()
        assert not (run_dir / f"seed{seed}/teacher").exists()

    report = json.loads((run_dir / "report.json").read_text())
    s = report["seeds"]
    assert s["seeds"] == [0, 1, 2] and s["main_seed"] == 0 and s["split_seed"] == 0 and s["teacher"] == "once"
    assert set(s["roles"]) == {"baseline", "student"}  # the teacher was trained once: not a per-seed figure
    for role in ("baseline", "student"):
        values = s["roles"][role]["values"]
        assert values[0] == report["models"][role]["quality"]["accuracy"]  # the main seed is the measured model
        assert all(0 <= v <= 1 for v in values)
        assert s["roles"][role]["mean"] == pytest.approx(statistics.mean(values), abs=1e-6)
        assert s["roles"][role]["sd"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    kd, base = s["roles"]["student"]["values"], s["roles"]["baseline"]["values"]
    diffs = [100 * (a - b) for a, b in zip(kd, base)]
    p = s["paired"]["student"]
    assert p["differences_points"] == pytest.approx(diffs, abs=1e-4)
    assert p["mean_points"] == pytest.approx(statistics.mean(diffs), abs=1e-4)
    sd = statistics.stdev(diffs)
    assert p["sd_points"] == pytest.approx(sd, abs=1e-4)
    if sd > 0:
        half = 4.302653 * sd / math.sqrt(3)
        assert p["ci_low_points"] == pytest.approx(statistics.mean(diffs) - half, abs=1e-3)
        assert p["ci_high_points"] == pytest.approx(statistics.mean(diffs) + half, abs=1e-3)
        t = statistics.mean(diffs) / (sd / math.sqrt(3))
        assert p["p_value"] == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), abs=1e-4)
    assert (p["better"], p["worse"], p["ties"]) == (sum(d > 1e-4 for d in diffs), sum(d < -1e-4 for d in diffs),
                                                   sum(abs(d) <= 1e-4 for d in diffs))

    # seed 2's models, evaluated here on the main seed's test split, give the values the report holds for seed 2
    main = Pipeline(parse_recipe(recipe), run_dir)
    task = main.build_task()
    for role in ("baseline", "student"):
        model = load_weights(create_model("resnet8", num_classes=task.num_classes),
                             run_dir / f"seed2/{role}/model.safetensors")
        quality = task.quality(prepare_for_measuring(model, task), task.eval_split)
        assert quality["accuracy"] == pytest.approx(s["roles"][role]["values"][2], abs=1e-9)

    md = (run_dir / "report.md").read_text()
    assert "## Seeds" in md and "| model | accuracy (%) mean ± sd | seed 0 (main) | seed 1 | seed 2 |" in md
    assert "Measured on one seed" not in md
    if any(report["models"][role].get("quality_flags") for role in ("baseline", "student")):
        # one epoch on 40 images may leave a model at chance: then no gain is claimed, over seeds or not
        assert "KD gain over the baseline: not meaningful" in md
    else:
        assert "over 3 seeds" in md
        within = not (p["ci_low_points"] > 0 or p["ci_high_points"] < 0)
        assert ("within seed spread" in md) == within

    # seeds_teacher: per_seed on the same run: the main teacher stays, seed 1 trains its own teacher and (since their
    # teacher changed) its students; seed 2 is not asked for and left alone
    seed2 = _hashes(run_dir / "seed2")
    recipe.update(seeds=[0, 1], seeds_teacher="per_seed")
    path.write_text(yaml.safe_dump(recipe))
    again = _cli("run", path, "--run-dir", run_dir, "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("teacher: training") == 1 and (run_dir / "seed1/teacher/model.safetensors").is_file()
    assert _hashes(run_dir / "teacher") == kept["teacher"] and _hashes(run_dir / "seed2") == seed2
    s = json.loads((run_dir / "report.json").read_text())["seeds"]
    assert s["teacher"] == "per_seed" and len(s["roles"]["teacher"]["values"]) == 2
