"""Results that cannot be right are called out: models at chance or collapsed onto one class are flagged in
report.json and report.md with the likely causes the run's data shows, the KD verdict refuses to read a gain
between such models, a task's primary metric (not always accuracy) decides the verdict, and the report states what
was done to the data (default horizontal flip) and which metrics could not be computed."""
import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchvision
from torch import nn

from leankd.measure.models import measure_models, model_entry
from leankd.report.metric import apply_named_metric
from leankd.report.notes import finish_report
from leankd.recipe import AudioConfig, AugmentConfig, DataConfig, MeasureConfig, SeqConfig
from leankd.report.markdown import render_markdown
from leankd.report.sanity import likely_causes, quality_flags
from leankd.report.schema import build_report
from leankd.search.config import Objective
from leankd.tasks import build_task


class OneClass(nn.Module):
    """A stride-32 ImageNet network whose answer is always class 3: a collapsed model, built on purpose."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)
        self.register_buffer("bias", torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5)

    def forward(self, x):
        return self.net(x) * 0 + self.bias


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """8x8 demo images: 40 per split, stratified, so each class is exactly 10% of the eval split."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = DataConfig(source="demo", image_size=8, limit_train=50, limit_test=40, val_fraction=0.2,
                     cache_dir=str(cache), augment=AugmentConfig(crop_padding=2))
    return build_task(cfg, torch.device("cpu"), seed=0)


def test_collapsed_model_on_input_smaller_than_its_stride_is_flagged(tiny_digits, tmp_path, monkeypatch):
    task = tiny_digits
    # latency is not under test here and is the slow part of measuring: no timed runs
    monkeypatch.setattr("leankd.measure.models.interleaved_latency", lambda models, *a, **k: {r: {} for r in models})
    torch.manual_seed(0)
    models = {"teacher": OneClass(), "baseline": OneClass(), "student": OneClass()}
    one = measure_models({"baseline": models["baseline"]}, task, MeasureConfig(latency_batch_sizes=[1],
                                                                               latency_warmup=0))["baseline"]
    measured = {role: copy.deepcopy(one) for role in models}  # the same network: measured once (seconds, not a minute)
    assert measured["baseline"]["probe"] == {"input_size": [8, 8], "feature_size": [1, 1], "total_stride": 32,
                                             "batchnorm_layers": 20}
    (tmp_path / "baseline").mkdir()
    rows = [{"epoch": 1, "lr": 0.1, "train_loss": 2.30, "samples_per_s": 100.0, "epoch_time_s": 0.48},
            {"epoch": 2, "lr": 0.1, "train_loss": 9.75, "samples_per_s": 100.0, "epoch_time_s": 0.48}]
    (tmp_path / "baseline" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = {"epochs": 2, "batch_size": 16, "steps": 6, "loss": "ce", "energy_source": "not measured"}
    entries = {role: model_entry(role, "torchvision:resnet18", "trained here", measured[role],
                                 dict(training) if role != "teacher" else None,
                                 "baseline/metrics.jsonl" if role == "baseline" else None)
               for role in models}
    report = finish_report("collapse", tmp_path, 0, task, entries, "cpu")

    saved = json.loads((tmp_path / "report.json").read_text())
    flags = saved["models"]["baseline"]["quality_flags"]
    assert [f["kind"] for f in flags] == ["at_chance", "collapsed"]
    # class 3 is 4 of the 40 eval images: accuracy 10%; chance 1/10 + 2 * sqrt(0.1 * 0.9 / 40) = 19.49%
    assert saved["models"]["baseline"]["quality"]["accuracy"] == pytest.approx(0.1)
    assert "anything up to 19.49% is within 2 binomial standard errors" in flags[0]["message"]
    assert "it takes 100.0% of all predictions, while the largest class is 10.0%" in flags[1]["message"]
    causes = flags[0]["causes"]
    assert causes[0].startswith("the input (8x8) is smaller than the model's total stride (32): its last feature "
                                "map is 1x1")
    assert causes[1].startswith("only 6 optimizer steps with 20 BatchNorm layers")
    assert causes[2].startswith("the training loss rose from 2.3 (epoch 1) to 9.75 (epoch 2)")
    # the teacher (no training block, no history) still gets the stride cause; nothing made up about training
    assert len(saved["models"]["teacher"]["quality_flags"][0]["causes"]) == 1
    assert saved == report

    md = (tmp_path / "report.md").read_text()
    assert "## Results that cannot be right" in md
    assert ("- **Baseline student**: accuracy 10.00% is at chance level: a model that learned nothing scores 10.00% "
            "here (1/10 for 10 classes)") in md
    assert "  - likely cause: the input (8x8) is smaller than the model's total stride (32)" in md
    gain = md.split("## Distillation gain", 1)[1].split("##", 1)[0]
    assert ("KD gain over the baseline: not meaningful (Teacher: at chance, collapsed; Baseline student: at chance, "
            "collapsed; KD student: at chance, collapsed): a difference involving a model that learned nothing "
            "measures noise, not distillation, so the accuracy gap (+0.00 points) is not a result.") in gain
    assert "within noise" not in gain and "points above" not in gain and "within 0.1 points" not in gain


def test_likely_causes_from_history_and_none_found():
    nan_history = [{"epoch": 1, "lr": 0.5, "train_loss": 2.3}, {"epoch": 2, "lr": 0.5, "train_loss": math.nan}]
    causes = likely_causes({"training": {"steps": 5000}}, nan_history)
    assert causes == ["the training loss became nan at epoch 2: training diverged; lower the learning rate "
                      "(lr 0.5 at the end of epoch 1)"]
    # no probe (a text model): few steps are named without claiming BatchNorm; a BatchNorm-free probe: not named
    assert likely_causes({"training": {"steps": 40}}, []) == [
        "only 40 optimizer steps: the weights may have barely moved from their start; train for more steps (more "
        "epochs, or a smaller batch)"]
    assert likely_causes({"training": {"steps": 40}, "probe": {"batchnorm_layers": 0}}, []) == []
    # a falling loss, many steps, an input larger than the stride: nothing to blame, and the report says so
    entry = {"quality": {"accuracy": 0.1, "macro_f1": 0.02, "num_samples": 1000, "top_prediction_share": 0.99,
                         "majority_class_share": 0.1},
             "probe": {"input_size": [32, 32], "total_stride": 4, "batchnorm_layers": 9},
             "training": {"steps": 5000}}
    flags = quality_flags(entry, {"num_classes": 10}, [{"train_loss": 2.0}, {"train_loss": 1.0}])
    assert [f["kind"] for f in flags] == ["at_chance", "collapsed"] and flags[0]["causes"] == []
    report = build_report({"name": "x"}, {"student": {"role": "student", **entry, "quality_flags": flags}})
    assert "no likely cause is visible in the run's data" in render_markdown(report)


def test_imbalanced_binary_task_chance_is_the_majority_share():
    """90% 'other': answering 'other' always is 90% accurate, which is chance, not skill; a model that predicts
    'other' 91% of the time (about as often as it occurs) is not collapsed."""
    data = {"num_classes": 2}
    always_other = {"quality": {"accuracy": 0.9, "macro_f1": 0.47, "num_samples": 400, "top_prediction_share": 1.0,
                                "majority_class_share": 0.9}}
    assert [f["kind"] for f in quality_flags(always_other, data, [])] == ["at_chance", "collapsed"]
    good = {"quality": {"accuracy": 0.97, "macro_f1": 0.91, "num_samples": 400, "top_prediction_share": 0.91,
                        "majority_class_share": 0.9}}
    assert quality_flags(good, data, []) == []
    # 0.9 + 2 * sqrt(0.9 * 0.1 / 400) = 0.93: 0.93 is flagged, 0.935 is not
    assert quality_flags({"quality": {**good["quality"], "accuracy": 0.93}}, data, [])[0]["kind"] == "at_chance"
    assert quality_flags({"quality": {**good["quality"], "accuracy": 0.935}}, data, []) == []


def _kws_report(student_frr: float, student_acc: float) -> dict:
    primary = {"name": "frr_at_far", "higher_is_better": False, "label": "false rejections at 1% false alarms",
               "also": ["fa_fr_auc"]}
    q = lambda acc, frr, auc: {"accuracy": acc, "macro_f1": 0.8, "num_samples": 2000, "frr_at_far": frr,  # noqa: E731
                               "fa_fr_auc": auc, "far_target": 0.01, "top_prediction_share": 0.9,
                               "majority_class_share": 0.9}
    models = {"teacher": {"role": "teacher", "quality": q(0.97, 0.491, 0.020), "training": {"epochs": 4}},
              "baseline": {"role": "baseline", "quality": q(0.95, 0.327, 0.030), "training": {"epochs": 4}},
              "student": {"role": "student", "quality": q(student_acc, student_frr, 0.080), "training": {"epochs": 4}}}
    return build_report({"name": "kws", "seed": 0, "dataset": {"num_classes": 2, "primary_metric": primary}}, models)


def test_keyword_primary_metric_decides_the_verdict_when_accuracy_disagrees():
    report = _kws_report(student_frr=0.836, student_acc=0.96)
    r = report["ratios"]
    assert r["kd_gain_points"] == pytest.approx(1.0)  # accuracy says KD helped...
    assert r["primary_metric"] == "frr_at_far"
    assert r["kd_gain_primary_points"] == pytest.approx(-50.9)  # ...false rejections 32.7% -> 83.6%: much worse
    assert r["vs_teacher"]["baseline"]["primary_delta_points"] == pytest.approx(16.4)  # 49.1% -> 32.7%: better
    md = render_markdown(report)
    gain = md.split("## Distillation gain", 1)[1].split("##", 1)[0]
    assert ("KD student is 50.90 points worse than the baseline trained alone on the task's primary metric, false "
            "rejections at 1% false alarms (lower is better): 83.60 % vs 32.70 %.") in gain
    assert "FA/FR AUC (lower is better): 0.0800 vs 0.0300." in gain
    assert "Accuracy (+1.00 points) points the other way, but it is not what this task is judged by." in gain
    assert "points above the baseline" not in gain
    assert "Baseline student +16.40, KD student -34.50" in md

    better = _kws_report(student_frr=0.20, student_acc=0.96)
    assert better["ratios"]["kd_gain_primary_points"] == pytest.approx(12.7)
    better_md = render_markdown(better)
    assert "KD student is 12.70 points better than the baseline" in better_md
    assert "points the other way" not in better_md  # accuracy +1.00 agrees: nothing to warn about


def test_keyword_task_declares_its_primary_metric(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("1", "2"):
        (tmp_path / "clips" / d).mkdir(parents=True)
        for s in ("ann", "bob", "cid", "dan", "eve"):
            for k in range(2):
                sf.write(tmp_path / "clips" / d / f"{d}_{s}_{k}.wav", 0.1 * rng.standard_normal(2000).astype("float32"),
                         8000, subtype="PCM_16")
    audio = AudioConfig(sample_rate=8000, clip_seconds=0.25, n_fft=256, win_length=256, hop_length=80, n_mels=16,
                        test_fraction=0.4, keyword="1", far_target=0.05)
    cfg = DataConfig(task="keyword_spotting", source=str(tmp_path / "clips"), val_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"), audio=audio)
    info = build_task(cfg, torch.device("cpu"), seed=0).describe()
    assert info["primary_metric"] == {"name": "frr_at_far", "higher_is_better": False, "also": ["fa_fr_auc"],
                                      "label": "false rejections at 5% false alarms"}
    no_keyword = build_task(cfg.model_copy(update={"audio": audio.model_copy(update={"keyword": None})}),
                            torch.device("cpu"), seed=0)
    assert no_keyword.describe()["primary_metric"]["name"] == "accuracy"


def test_default_hflip_is_stated_with_a_warning(tmp_path):
    def steps(**augment):
        cfg = DataConfig(source="demo", limit_train=20, limit_test=10, val_fraction=0.0, eval_split="test",
                         cache_dir=str(tmp_path), **({"augment": AugmentConfig(**augment)} if augment else {}))
        return build_task(cfg, torch.device("cpu"), seed=0).describe()["preprocessing"]

    default = [s for s in steps() if "horizontal flip" in s["what"]]
    assert len(default) == 1 and default[0]["by_default"] is True
    assert default[0]["warning"].startswith("horizontal flip is on only because it is the default")
    asked = [s for s in steps(hflip=True) if "horizontal flip" in s["what"]]
    assert asked == [{"what": "training augmentation: random horizontal flip (p=0.5)", "by_default": False}]
    assert not [s for s in steps(hflip=False) if "horizontal flip" in s["what"]]

    info = build_task(DataConfig(source="demo", limit_train=20, limit_test=10, cache_dir=str(tmp_path)),
                      torch.device("cpu"), seed=0).describe()
    md = render_markdown(build_report({"name": "x", "dataset": info}, {}))
    assert "- **Preprocessing:** training augmentation: random horizontal flip (p=0.5) (on by default)." in md
    assert "- **Warning:** horizontal flip is on only because it is the default: it mirrors digits" in md


def test_grayscale_replicated_to_rgb_is_stated(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label, value in (("a", 40), ("b", 200)):
            (tmp_path / "img" / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (8, 8), value + i).save(tmp_path / "img" / split / label / f"{i}.png")
    cfg = DataConfig(source=str(tmp_path / "img"), val_fraction=0.25, cache_dir=str(tmp_path / "cache"),
                     augment=AugmentConfig(hflip=False, crop_padding=0))
    steps = build_task(cfg, torch.device("cpu"), seed=0).describe()["preprocessing"]
    # 8 images per split, 25% of train held out for validation: 6 train images, all gray
    assert steps == [{"what": "6 of 6 training images checked (100%) are grayscale replicated to 3 RGB channels (the "
                              "models see three identical channels)"}]


def test_missing_sacrebleu_is_named_with_the_install_hint(tmp_path, monkeypatch):
    import leankd.tasks.seq2seq as seq_task

    monkeypatch.setattr(seq_task, "_has_sacrebleu", lambda: False)
    (tmp_path / "p.tsv").write_text("source\ttarget\n" + "".join(f"w{i}\tt{i % 3} t{i % 5}\n" for i in range(40)))
    cfg = DataConfig(task="seq2seq", source=str(tmp_path / "p.tsv"), val_fraction=0.1,
                     seq=SeqConfig(tokenization="whitespace"))
    info = build_task(cfg, torch.device("cpu"), seed=0).describe()
    assert info["unavailable_metrics"] == [{"name": "BLEU / chrF", "why": "the optional package sacrebleu is not "
                                            "installed", "fix": "pip install sacrebleu"}]
    assert info["primary_metric"]["name"] == "ser" and info["primary_metric"]["higher_is_better"] is False
    assert info["split_method"]["method"] == "by group" and sum(info["split_method"]["groups"].values()) == 40
    md = render_markdown(build_report({"name": "x", "dataset": info}, {}))
    assert ("- **Not computed:** BLEU / chrF (the optional package sacrebleu is not installed): "
            "`pip install sacrebleu`.") in md


def test_recipe_named_metric_becomes_primary():
    class Fake:
        info = {"source": "x"}

        def primary_metric(self):
            return {"name": "accuracy", "higher_is_better": True}

    task = Fake()
    recipe = SimpleNamespace(search=SimpleNamespace(objectives=[Objective(metric="mcc", direction="maximize"),
                                                                Objective(metric="macs", direction="minimize")]))
    apply_named_metric(recipe, task)
    assert task.info["primary_metric"] == {"name": "mcc", "label": "mcc (search.objectives)", "higher_is_better": True}
    untouched = Fake()
    apply_named_metric(SimpleNamespace(search=None), untouched)
    assert "primary_metric" not in untouched.info


def test_text_metric_of_the_recipe_wins_over_search_objectives_and_enters_no_fingerprint():
    from leankd.errors import RecipeError
    from leankd.stages import data_fingerprints
    from leankd.recipe import parse_recipe

    class Fake:
        def __init__(self, num_classes=2, regression=False):
            self.info, self.num_classes, self.regression = {"fingerprint": "abc"}, num_classes, regression

        def primary_metric(self):
            return {"name": "pearson" if self.regression else "accuracy", "higher_is_better": True}

    def recipe(task="text_classification", **text):
        return parse_recipe({"data": {"task": task, "text": {"tokenizer": "words", **text}},
                             "teacher": {"model": "text_cnn"}, "student": {"model": "text_cnn"},
                             "search": {"space": {"train.lr": {"low": 0.001, "high": 0.01}},
                                        "objectives": [{"metric": "f1", "direction": "maximize"}]}})

    task = Fake()
    apply_named_metric(recipe(), task)  # no data.text.metric: search.objectives decide, as before
    assert task.info["primary_metric"]["name"] == "f1_positive"
    task = Fake()
    apply_named_metric(recipe(metric="mcc"), task)
    assert task.info["primary_metric"] == {"name": "mcc", "higher_is_better": True, "label": "MCC (data.text.metric)"}
    task = Fake()
    apply_named_metric(recipe(metric="accuracy"), task)  # the task's own default, named outright: objectives ignored
    assert "primary_metric" not in task.info
    task = Fake(regression=True)
    apply_named_metric(recipe("text_regression", metric="spearman"), task)
    assert task.info["primary_metric"]["name"] == "spearman"
    with pytest.raises(RecipeError, match="f1_positive is the F1 of class 1 of a two-class task.*3 classes"):
        apply_named_metric(recipe(metric="f1_positive"), Fake(num_classes=3))
    with pytest.raises(RecipeError, match="'pearson' is not computed by data.task text_classification.*allowed: "
                                          "accuracy, macro_f1, mcc, f1_positive for text_classification"):
        recipe(metric="pearson")

    # the metric is only measured: no data fingerprint, teacher's or students', depends on it
    plain = data_fingerprints(recipe(), Fake())
    for metric in ("mcc", "macro_f1"):
        assert data_fingerprints(recipe(metric=metric), Fake()) == plain
    assert "metric" not in plain[0]["data"]["text"] and "metric" not in plain[1]["data"]["text"]


def test_teacher_at_chance_and_healthy_runs_keep_the_classic_verdict():
    def entry(role, acc):
        return {"role": role, "training": {"epochs": 3},
                "quality": {"accuracy": acc, "macro_f1": acc - 0.01, "num_samples": 1000,
                            "top_prediction_share": 0.12, "majority_class_share": 0.1}}

    dataset = {"num_classes": 10, "primary_metric": {"name": "accuracy", "higher_is_better": True}}
    models = {"teacher": entry("teacher", 0.11), "baseline": entry("baseline", 0.80), "student": entry("student", 0.82)}
    for m in models.values():
        flags = quality_flags(m, dataset, [])
        if flags:
            m["quality_flags"] = flags
    assert list(k for k, m in models.items() if "quality_flags" in m) == ["teacher"]
    gain = render_markdown(build_report({"name": "x", "dataset": dataset}, models)).split("## Distillation gain")[1]
    assert "not meaningful (Teacher: at chance): the teacher has nothing to teach" in gain

    del models["teacher"]["quality_flags"]
    models["teacher"]["quality"]["accuracy"] = 0.9
    gain = render_markdown(build_report({"name": "x", "dataset": dataset}, models)).split("## Distillation gain")[1]
    assert "KD student is 2.00 points above the baseline trained alone with the same budget (3 epochs)" in gain


def test_a_healthy_model_with_the_same_steps_refutes_the_step_count_cause():
    """Seen in the logit-methods benchmark: DKD (beta 8, T 4) on a 10-epoch run ended at chance and the report
    blamed 170 optimizer steps with BatchNorm, while the baseline trained for the same 170 steps reached 48%. The
    cause named must be what differs between the two (the loss), not the step count; with no healthy peer the step
    count stays the cause."""
    from leankd.report.sanity import add_quality_flags

    def entry(acc, f1, loss, steps=170, label=None):
        e = {"quality": {"accuracy": acc, "macro_f1": f1, "num_samples": 2000},
             "training": {"steps": steps, "loss": loss}, "probe": {"batchnorm_layers": 21}}
        return {**e, "label": label} if label else e

    dataset = {"num_classes": 10, "eval_size": 2000}
    models = {"baseline": entry(0.4845, 0.47, "ce", label="Baseline student"),
              "student": entry(0.097, 0.0225, "ce + dkd(a=1,b=8,T=4,warmup=paper)", label="KD student")}
    add_quality_flags(models, dataset, None)
    assert "quality_flags" not in models["baseline"]
    flags = models["student"]["quality_flags"]
    assert [f["kind"] for f in flags] == ["at_chance", "collapsed"]
    for flag in flags:
        assert len(flag["causes"]) == 1 and not flag["causes"][0].startswith("only 170 optimizer steps")
        assert flag["causes"][0].startswith("Baseline student trained for 170 optimizer steps (this model: 170) and "
                                            "reaches 48.45%, so too few steps is not the cause; what differs is the "
                                            "loss: `ce + dkd(a=1,b=8,T=4,warmup=paper)` here, `ce` there.")

    # a peer that trained longer proves nothing about this model's steps; nor does a broken one
    models = {"baseline": entry(0.4845, 0.47, "ce", steps=1000), "student": entry(0.097, 0.0225, "ce + dkd")}
    add_quality_flags(models, dataset, None)
    assert models["student"]["quality_flags"][0]["causes"][0].startswith("only 170 optimizer steps with 21 BatchNorm")
    models = {"baseline": entry(0.10, 0.02, "ce"), "student": entry(0.097, 0.0225, "ce + dkd")}
    add_quality_flags(models, dataset, None)
    assert all(m["quality_flags"][0]["causes"][0].startswith("only 170 optimizer steps") for m in models.values())
