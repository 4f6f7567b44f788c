"""Compression inside a run: artifacts measured like the fp32 models, flagged when they lose accuracy, and a
failing target reported without losing the run."""
import json

import pytest
import torch
from typer.testing import CliRunner

from leankd.cli import app
from test_pipeline import make_image_folder, write_recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp, data, baseline=False, teacher={"model": "resnet8", "train": {"epochs": 2}},
                          train={"epochs": 3, "batch_size": 16, "lr": 0.05})
    out = runner.invoke(app, ["run", str(recipe), "--quiet"])
    assert out.exit_code == 0, out.output
    return tmp / "runs" / "tiny"


def test_compress_builds_and_measures_every_target(finished_run):
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "fp16", "int8-dynamic", "onnx", "int8-static",
                              "--quiet"])
    assert out.exit_code == 0, out.output
    assert out.output.count("reusing") == 2  # teacher and student were not retrained
    rep = json.loads((finished_run / "report.json").read_text())
    student = rep["models"]["student"]
    for role, fmt in (("student_fp16", "torch"), ("student_int8_dynamic", "torch"), ("student_onnx", "onnx"),
                      ("student_int8_static", "onnx")):
        m = rep["models"][role]
        a = m["artifact"]
        assert a["format"] == fmt and a["base_role"] == "student" and (finished_run / a["path"]).exists()
        assert m["cost"]["size_bytes"] == (finished_run / a["path"]).stat().st_size
        assert m["cost"]["macs"] == student["cost"]["macs"]
        assert {"batch_1", "batch_4"} <= set(m["latency"]["cpu"])
        assert m["quality"]["num_samples"] == student["quality"]["num_samples"]
        vb = rep["ratios"]["vs_base"][role]
        assert vb["accuracy_delta_points"] == pytest.approx(
            100 * (m["quality"]["accuracy"] - student["quality"]["accuracy"]), abs=1e-3)
        assert a["flagged"] == (a["accuracy_drop_points"] > a["max_drop_points"])
    assert rep["models"]["student_onnx"]["artifact"]["max_abs_diff"] < 1e-3
    fp16 = rep["models"]["student_fp16"]
    assert fp16["cost"]["size_bytes"] < 0.6 * student["cost"]["size_bytes"]
    conv_left = rep["models"]["student_int8_dynamic"]["artifact"]["left_in_float"]
    assert any("Conv2d" in k or "Conv2d" in v for k, v in conv_left.items())  # convs named, not silently skipped
    md = (finished_run / "report.md").read_text()
    assert "## Deployment artifacts" in md and "int8-static" in md


def test_flagged_artifact_and_failing_target(finished_run, monkeypatch):
    from leankd.compress import targets
    from leankd.errors import LeanKDError

    class Garbage(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4).index_fill_(1, torch.tensor([3]), 1.0)  # always class 3

    def broken_half(model, ctx):
        path = ctx.out_dir / "fp16.bin"
        path.write_bytes(b"x" * 100)
        return targets.BuiltArtifact(Garbage(), path, "torch")

    earlier_onnx = json.loads((finished_run / "report.json").read_text())["models"]["student_onnx"]
    earlier_file = finished_run / earlier_onnx["artifact"]["path"]
    earlier_bytes = earlier_file.read_bytes()

    def failing_export(model, ctx):  # dies after writing part of a file of the same name as the good one
        partial = ctx.out_dir / earlier_file.relative_to(finished_run / "compressed")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"half an onnx file")
        raise LeanKDError("ONNX export failed at operator 'aten::weird_op': replace it or use dynamo=False")

    monkeypatch.setattr(targets.TARGETS.get("fp16"), "build", broken_half)  # the registered entries' builders
    monkeypatch.setattr(targets.TARGETS.get("onnx"), "build", failing_export)
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "fp16", "onnx", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "aten::weird_op" in out.output and "flagged" in out.output
    rep = json.loads((finished_run / "report.json").read_text())
    assert rep["models"]["student"]["quality"]["accuracy"] > 0.3  # so a constant prediction (25 %) is a real drop
    assert rep["models"]["student_fp16"]["artifact"]["flagged"] is True
    assert not (finished_run / "compressed" / "fp16.safetensors").exists()  # the rebuilt fp16's earlier file
    assert rep["models"]["student_onnx"] == earlier_onnx  # the failed rebuild keeps the earlier artifact
    assert earlier_file.read_bytes() == earlier_bytes  # the failed target's partial file was not merged over it
    assert any(n.startswith("compression target onnx failed") and "aten::weird_op" in n
               and n.endswith("(the artifact built earlier is kept in the report)") for n in rep["notes"])
    assert "FLAGGED" in (finished_run / "report.md").read_text()


def test_compress_rejects_unknown_target_and_non_run_dir(finished_run, tmp_path):
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "int4"])
    assert out.exit_code == 2 and "compress.targets" in out.output and "int8-static" in out.output
    out = runner.invoke(app, ["compress", str(tmp_path), "--to", "fp16"])
    assert out.exit_code == 2 and "not a run directory" in out.output


def test_qat_is_reported_beside_ptq_and_its_same_budget_control(finished_run):
    recipe_before = (finished_run / "recipe.yaml").read_bytes()
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "qat", "--set", "compress.qat.epochs=1",
                              "--quiet"])
    assert out.exit_code == 0, out.output
    assert out.output.count("reusing") == 2  # the teacher distils again, but neither stage is retrained
    rep = json.loads((finished_run / "report.json").read_text())
    assert (finished_run / "recipe.yaml").read_bytes() == recipe_before  # the run's recipe is never rewritten:
    for role in ("student_int8_static", "student_qat", "student_qat_control"):  # the report says what was added
        assert rep["models"][role]["artifact"]["added_after_run"] is True
    student = rep["models"]["student"]
    for role in ("student_int8_static", "student_qat", "student_qat_control"):
        m = rep["models"][role]
        assert m["artifact"]["format"] == "onnx" and (finished_run / m["artifact"]["path"]).exists()
        assert m["quality"]["num_samples"] == student["quality"]["num_samples"]
    for role in ("student_qat", "student_qat_control"):
        m = rep["models"][role]
        assert m["training"]["epochs"] == 1 and m["training"]["wall_time_s"] > 0
        history = [json.loads(line) for line in (finished_run / m["history"]).read_text().splitlines()]
        assert len(history) == 1
    qat_notes = [n for n in rep["notes"] if n.startswith("Quantization-aware distillation")]
    assert len(qat_notes) == 1
    acc = {r: 100 * rep["models"][r]["quality"]["accuracy"] for r in ("student_qat", "student_int8_static")}
    assert f"{acc['student_qat'] - acc['student_int8_static']:+.2f} points vs PTQ" in qat_notes[0]
    assert "fine-tune (s)" in (finished_run / "report.md").read_text()


def test_compress_then_export_add_to_the_run_without_remeasuring(finished_run):
    """The README's order: compress, then export. Each call adds its artifacts; nothing an earlier call made is
    wiped, and the fp32 models keep their numbers (the new artifact is timed beside a re-timed fp32 student)."""
    out = runner.invoke(app, ["compress", str(finished_run), "--to", "int8-dynamic", "--quiet"])
    assert out.exit_code == 0, out.output
    before = json.loads((finished_run / "report.json").read_text())
    int8_file = finished_run / before["models"]["student_int8_dynamic"]["artifact"]["path"]
    int8_bytes = int8_file.read_bytes()
    out = runner.invoke(app, ["export", str(finished_run), "--quiet"])
    assert out.exit_code == 0, out.output
    assert out.output.count("reusing") == 2  # teacher and student: nothing retrained
    after = json.loads((finished_run / "report.json").read_text())
    assert set(before["models"]) <= set(after["models"]) and "student_onnx" in after["models"]
    for role, entry in before["models"].items():
        if role != "student_onnx":  # rebuilt by export; every other model and artifact is exactly as it was
            assert after["models"][role] == entry, role
    assert int8_file.read_bytes() == int8_bytes
    onnx = after["models"]["student_onnx"]
    reference = onnx["artifact"]["reference_latency"]["cpu"]["batch_1"]["median_ms"]
    assert reference != after["models"]["student"]["latency"]["cpu"]["batch_1"]["median_ms"]  # its own timing
    ratio = after["ratios"]["vs_base"]["student_onnx"]
    if onnx["artifact"]["reference_latency"]["cpu"].get("reliable") is False or \
            onnx["latency"]["cpu"].get("reliable") is False:  # a noisy timing is not turned into a ratio
        assert ratio["latency_cpu_x_faster_batch_1"] is None
        assert "latency_cpu_x_faster_batch_1" in ratio["unreliable_latency"]
    else:
        assert ratio["latency_cpu_x_faster_batch_1"] == pytest.approx(
            round(reference / onnx["latency"]["cpu"]["batch_1"]["median_ms"], 4))
    assert any(n.startswith("onnx added to the finished run without re-measuring") for n in after["notes"])
    table = (finished_run / "report.md").read_text().split("## Deployment artifacts")[1]
    for target in ("int8-dynamic", "int8-static", "qat", "onnx"):
        assert f"| {target} |" in table

    out = runner.invoke(app, ["compress", str(finished_run), "--to", "fp16", "--remeasure", "--quiet"])
    assert out.exit_code == 0, out.output
    again = json.loads((finished_run / "report.json").read_text())
    assert set(again["models"]) == set(after["models"])  # every target rebuilt, every model measured together
    assert all(m["artifact"]["reference_latency"] is None for m in again["models"].values() if m.get("artifact"))
    assert again["models"]["teacher"]["latency"] != after["models"]["teacher"]["latency"]
