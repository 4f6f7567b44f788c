"""A whole causal_lm run through the CLI on a small generated corpus: teacher, baseline and a student distilled from
the teacher's cached top-k logits, the int8 artifact, and the report's language-model figures (loss, perplexity,
bits per character, per-token generation latency, samples); a rerun reuses every stage."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from leankd.cli import app
from leankd.data.lm import load_tokenizer

runner = CliRunner()
WORDS = "the king and queen of the castle rode out to see a fox near the river bank at dawn".split()


def corpus(lines: int = 700) -> str:
    """Lines of words in a fixed order with a rotating start: learnable, so a trained model beats uniform."""
    return "".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)) + ".\n" for i in range(lines))


def recipe(tmp_path, **distill) -> dict:
    (tmp_path / "corpus.txt").write_text(corpus())
    return {
        "name": "lm", "output_dir": str(tmp_path / "runs"),
        "data": {"task": "causal_lm", "source": str(tmp_path / "corpus.txt"), "val_fraction": 0.1,
                 "lm": {"context": 16, "test_fraction": 0.05}},
        "teacher": {"model": "gpt", "kwargs": {"layers": 2, "hidden": 32, "heads": 2}, "train": {"epochs": 2},
                    "cache": True, "cache_top_k": 4},
        "student": {"model": "gpt", "kwargs": {"layers": 1, "hidden": 16, "heads": 2}},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.01},
        "distill": {"loss": [{"kind": "forward_kl", "weight": 0.5}, {"kind": "ce", "weight": 0.5}], **distill},
        "compress": {"targets": ["int8-dynamic"]},
        "measure": {"latency_runs": 30, "latency_warmup": 1, "latency_batch_sizes": [1]},
    }


def test_a_causal_lm_run_reports_language_model_figures_and_reuses_its_stages(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "lm"
    rep = json.loads((run_dir / "report.json").read_text())
    assert list(rep["models"]) == ["teacher", "baseline", "student", "student_int8_dynamic"]
    vocab = rep["run"]["dataset"]["vocab_size"]
    assert rep["run"]["dataset"]["primary_metric"]["name"] == "loss"
    for role, m in rep["models"].items():
        q = m["quality"]
        assert q["split"] == "test" and q["num_samples"] > 0
        assert q["perplexity"] == pytest.approx(math.exp(q["loss"]), rel=1e-6)
        assert q["bpc"] == pytest.approx(q["loss"] / math.log(2), rel=1e-6)  # characters
    assert rep["models"]["teacher"]["quality"]["loss"] < math.log(vocab) - 1.0  # it learned far beyond uniform
    assert rep["models"]["student"]["training"]["loss"] == "0.5*forward_kl(T=1) + 0.5*ce"  # T = 1 for LMs
    for role in ("teacher", "baseline", "student", "student_int8_dynamic"):
        gen = rep["models"][role]["generation"]
        assert [r["batch_size"] for r in gen["latency"]] == [1, 8] and all(r["ms_per_token"] > 0 for r in gen["latency"])
        assert gen["kv_cache"] is True and len(gen["sample"]) > 0 and gen["prompt"]
    md = (run_dir / "report.md").read_text()
    for text in ("## Samples", "bits per character", "perplexity", "ms per token", "MACs per token", "tokens/s"):
        assert text in md, text
    tokenizer = load_tokenizer(run_dir / "lm_tokenizer.json")
    assert tokenizer.decode(tokenizer.encode("the king.")) == "the king."

    again = runner.invoke(app, ["run", str(path), "--quiet"])
    assert again.exit_code == 0, again.output
    assert again.output.count("reusing") == 3
    assert json.loads((run_dir / "report.json").read_text())["models"]["student"]["quality"] == \
        rep["models"]["student"]["quality"]


def test_a_top_k_as_large_as_the_vocabulary_is_refused_before_training(tmp_path):
    r = recipe(tmp_path)
    r["teacher"]["cache_top_k"] = 500
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 2 and "teacher.cache_top_k = 500 must be between 1 and" in result.output
    assert not (tmp_path / "runs" / "lm" / "teacher" / "model.safetensors").exists()


def test_sequence_level_and_on_policy_students_train_as_stages_of_their_own(tmp_path):
    r = recipe(tmp_path, lm={"students": ["seq", "on_policy"], "prompt_tokens": 4, "seq_prompts": 40,
                             "on_policy_fraction": 0.5})
    r["teacher"].update(cache=False, cache_top_k=None)
    r["compress"] = {"targets": []}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "lm"
    rep = json.loads((run_dir / "report.json").read_text())
    assert list(rep["models"]) == ["teacher", "baseline", "student", "student_seq", "student_on_policy"]
    seq = rep["models"]["student_seq"]["training"]
    assert seq["seq_kd_data"]["sequences"] == 40 and seq["seq_kd_data"]["tokens_per_sequence"] == 17
    assert seq["loss"] == "ce" and seq["steps"] == rep["models"]["baseline"]["training"]["steps"]
    on = rep["models"]["student_on_policy"]["training"]
    assert on["loss"] == "0.5*forward_kl(T=1)" and on["steps"] == rep["models"]["baseline"]["training"]["steps"]
    assert 0 < on["on_policy"]["on_policy_batches"] < on["on_policy"]["batches"] == on["steps"]
    notes = " ".join(rep.get("notes") or [])
    assert "seq-KD student: test loss" in notes and "continued by the student itself" in notes
    again = runner.invoke(app, ["run", str(path), "--quiet"])
    assert again.exit_code == 0 and again.output.count("reusing") == 5
    assert "teacher continues" not in again.output  # the continuations were read back, not generated again
    assert json.loads((run_dir / "report.json").read_text())["models"]["student_on_policy"]["training"]["on_policy"] \
        == on["on_policy"]


def test_students_can_start_from_every_other_teacher_layer(tmp_path):
    r = recipe(tmp_path)
    r["teacher"].update(kwargs={"layers": 4, "hidden": 16, "heads": 2}, cache=False, cache_top_k=None)
    r["student"] = {"model": "gpt", "kwargs": {"layers": 2, "hidden": 16, "heads": 2}, "init_from_teacher": "every_other"}
    r["compress"] = {"targets": []}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "start from the teacher's layers [0, 2]" in result.output

    # a student of another width is refused before the teacher trains
    r["student"]["kwargs"]["hidden"] = 32
    r["name"] = "wide"
    path.write_text(yaml.safe_dump(r))
    wide = runner.invoke(app, ["run", str(path), "--quiet"])
    assert wide.exit_code == 2 and "hidden" in wide.output
    assert not (tmp_path / "runs" / "wide" / "teacher").exists()


def test_a_student_that_cannot_copy_teacher_layers_is_a_clear_error(tmp_path):
    r = {"data": {"source": "demo", "limit_train": 32, "cache_dir": str(tmp_path / "c")}, "name": "img",
         "output_dir": str(tmp_path / "runs"), "teacher": {"model": "resnet8"},
         "student": {"model": "resnet8", "init_from_teacher": "every_other"}, "train": {"epochs": 1, "batch_size": 16}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 2 and "cannot start from a teacher's layers" in result.output
