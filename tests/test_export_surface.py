"""`leankd export` touches only what it is asked (issue 27): the run's recipe.yaml stays byte for byte, the fp32
models keep their measurements, only the new artifact is measured, and a later `leankd run` of the recipe retrains
nothing; the ONNX file carries the preprocessing its user needs; the report's plots read right (integer epochs,
accuracy in %, KD objective and cross-entropy on separate axes, latency error bars, labels that do not overlap).

One tiny run (demo data, 1 epoch) is trained and exported once for the module; the plot checks inspect matplotlib
figure objects, not pixels.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from test_failure_catalogue import cli, snapshot, tiny_recipe, write_yaml

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # given in the recipe, so the exported values are known by hand
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FP32_ROLES = ("teacher", "baseline", "student")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(recipe path, run dir, snapshot and report before the export, the export's CLI result)."""
    tmp = tmp_path_factory.mktemp("export")
    recipe = tiny_recipe(tmp, data={"mean": MEAN, "std": STD})
    path = write_yaml(tmp / "r.yaml", recipe)
    result = cli("run", path, "--quiet")
    assert result.code == 0, result.text[-3000:]
    run_dir = tmp / "runs" / "tiny"
    before = snapshot(run_dir)
    report_before = json.loads((run_dir / "report.json").read_text())
    result = cli("export", run_dir, "--format", "onnx")
    assert result.code == 0, result.text[-3000:]
    return path, run_dir, before, report_before, result


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_export_keeps_the_recipe_and_every_other_file(exported):
    _, run_dir, before, _, _ = exported
    after = snapshot(run_dir)
    assert after["recipe.yaml"] == before["recipe.yaml"]  # byte-identical: compress.targets not extended
    rewritten = {"report.json", "report.md", "curves.png", "quality_vs_macs.png", "quality_vs_latency.png"}
    changed = sorted(k for k in before if k not in rewritten and after.get(k) != before[k])
    assert not changed, f"export changed or removed {changed}"
    assert sorted(set(after) - set(before)) == ["compressed/fp32.onnx"]
    assert not (run_dir / "previous").exists()  # the same run extended, not a new recipe


def test_export_measures_only_the_new_artifact(exported):
    _, run_dir, _, old, result = exported
    new = _report(run_dir)
    assert set(new["models"]) == set(old["models"]) | {"student_onnx"}
    for role in FP32_ROLES:  # the fp32 models' figures come from the earlier report, untouched
        assert new["models"][role]["latency"] == old["models"][role]["latency"], role
        assert new["models"][role]["quality"] == old["models"][role]["quality"], role
    art = new["models"]["student_onnx"]["artifact"]
    assert art["target"] == "onnx" and art["path"] == "compressed/fp32.onnx"
    assert art["added_after_run"] is True  # the report says what the run's recipe.yaml does not list
    assert art["reference_latency"]["cpu"]["batch_1"]["median_ms"] > 0  # the student re-timed beside it
    text = " ".join(result.text.split())
    assert "measuring student_onnx beside the fp32 student" in text
    assert "measuring teacher" not in text


def test_run_after_export_retrains_nothing(exported, tmp_path):
    path, run_dir, _, _, _ = exported
    copy_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, copy_dir)
    recipe = tiny_recipe(tmp_path, data={"mean": MEAN, "std": STD})
    recipe["data"]["cache_dir"] = str(Path(path).parent / "cache")
    weights = {k: v for k, v in snapshot(copy_dir).items() if k.endswith("model.safetensors")}
    assert len(weights) == 3
    result = cli("run", write_yaml(tmp_path / "r.yaml", recipe))
    assert result.code == 0, result.text[-3000:]
    text = " ".join(result.text.split())
    for role in FP32_ROLES:
        assert f"{role}: reusing" in text, role
    assert {k: v for k, v in snapshot(copy_dir).items() if k.endswith("model.safetensors")} == weights


def test_onnx_carries_its_preprocessing(exported):
    ort = pytest.importorskip("onnxruntime")
    from leankd import __version__

    _, run_dir, _, _, _ = exported
    session = ort.InferenceSession(str(run_dir / "compressed" / "fp32.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["mean"]) == MEAN and json.loads(meta["std"]) == STD
    assert json.loads(meta["class_names"]) == CIFAR10  # in output order
    assert json.loads(meta["input_size"]) == [32, 32]
    assert meta["input_layout"].startswith("NCHW")
    assert meta["task_kind"] == "image_classification"
    assert meta["leankd_version"] == __version__
    # what the metadata says is what the graph takes: one NCHW input of that size
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [3, 32, 32]


# ------------------------------------------------------------------------------------------------ plots
def _history(path: Path, train_loss: list[float], val_acc: list[float]) -> None:
    rows = [{"epoch": i + 1, "train_loss": tl, "val_loss": 2.0 - 0.1 * i, "val_accuracy": va}
            for i, (tl, va) in enumerate(zip(train_loss, val_acc))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_curves_integer_epochs_percent_and_separate_loss_axes(exported, tmp_path):
    from leankd.report.plots import curves_figure

    _, run_dir, _, _, _ = exported
    report = _report(run_dir)
    assert report["models"]["student"]["training"]["loss"] != "ce"  # the KD student trains on a KD objective
    _history(tmp_path / "teacher.jsonl", [2.3, 2.0, 1.8], [0.30, 0.40, 0.50])
    _history(tmp_path / "baseline.jsonl", [2.2, 1.9, 1.7], [0.25, 0.35, 0.45])
    _history(tmp_path / "student.jsonl", [0.27, 0.21, 0.18], [0.28, 0.38, 0.60])
    for role in FP32_ROLES:
        report["models"][role]["history"] = f"{role}.jsonl"
    fig = curves_figure(report, tmp_path)
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"cross-entropy", "distillation objective (train)", "val accuracy"}
    one_epoch = curves_figure(_report(run_dir), run_dir)  # the run's own histories: a single epoch
    for ax in [*axes.values(), *one_epoch.axes]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    acc = axes["val accuracy"]
    assert "%" in acc.get_ylabel()
    assert max(max(line.get_ydata()) for line in acc.get_lines()) == pytest.approx(60.0)
    ce_labels = {line.get_label() for line in axes["cross-entropy"].get_lines()}
    kd_lines = axes["distillation objective (train)"].get_lines()
    assert [list(line.get_ydata()) for line in kd_lines] == [[0.27, 0.21, 0.18]]  # only the KD student's objective
    assert not any(label.endswith(" train") and "KD" in label for label in ce_labels)
    assert sum(label.endswith(" val") for label in ce_labels) == 3  # every role's val cross-entropy
    assert "T²" in axes["distillation objective (train)"].get_ylabel()


def _crowded(report: dict) -> dict:
    """The exported report plus artifacts at nearly the student's latency, MACs and accuracy: labels collide."""
    report = copy.deepcopy(report)
    base = report["models"]["student_onnx"]
    for i, target in enumerate(["fp16", "int8-dynamic", "int8-static", "onnx-int8-dynamic"]):
        entry = copy.deepcopy(base)
        entry["artifact"]["target"] = target
        entry["label"] = f"KD student {target}"
        entry["latency"]["cpu"]["batch_1"]["median_ms"] *= 1.0 + 0.01 * i
        report["models"][f"student_{target.replace('-', '_')}"] = entry
    return report


def _boxes_disjoint(fig) -> None:
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    assert len(boxes) >= 7
    for i, (na, a) in enumerate(boxes):
        for nb, b in boxes[i + 1:]:
            assert not a.overlaps(b), f"labels {na!r} and {nb!r} overlap"


def test_quality_vs_latency_has_timing_error_bars_and_disjoint_labels(exported):
    from matplotlib.container import ErrorbarContainer

    from leankd.report.plots import _cpu_b1, _cpu_b1_spread, scatter_figure

    _, run_dir, _, _, _ = exported
    report = _crowded(_report(run_dir))
    fig = scatter_figure(report, _cpu_b1, "latency", "t", xerr_fn=_cpu_b1_spread)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(report["models"]) and all(c.has_xerr for c in bars)
    assert "%" in ax.get_ylabel()
    _boxes_disjoint(fig)
    # the bar spans the per-round fastest blocks of the measurement
    stats = report["models"]["teacher"]["latency"]["cpu"]["batch_1"]
    fastest = [min(r) for r in stats["round_ms"]]
    below, above = _cpu_b1_spread(report["models"]["teacher"])
    assert stats["median_ms"] - below == pytest.approx(min(fastest))
    assert stats["median_ms"] + above == pytest.approx(max(fastest))


def test_quality_vs_macs_labels_do_not_overlap(exported):
    from matplotlib.container import ErrorbarContainer

    from leankd.report.plots import scatter_figure

    _, run_dir, _, _, _ = exported
    report = _crowded(_report(run_dir))  # the artifacts share the student's MACs exactly
    fig = scatter_figure(report, lambda e: (e.get("cost") or {}).get("macs"), "MACs", "t")
    (ax,) = fig.axes
    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == len(report["models"])
    _boxes_disjoint(fig)


# ------------------------------------------------------------------------------------- metadata of other tasks
def test_text_metadata_names_each_models_tokenizer(tmp_path):
    import torch

    from leankd.models import create_model
    from leankd.tasks import build_task
    from test_text_students import _recipe

    r = _recipe(tmp_path)
    task = build_task(r.data, torch.device("cpu"), seed=0)
    teacher = create_model(r.teacher.model, num_classes=2)
    student = create_model("text_bilstm", num_classes=2, **task.model_defaults())
    for model in (teacher, student):
        task.prepare_model(model)
    words, hf = task.deploy_metadata(student), task.deploy_metadata(teacher)
    assert words["class_names"] == hf["class_names"] == list(task.class_names)
    assert words["task_kind"] == "text_classification" and words["max_length"] == 128
    assert words["tokenizer"].startswith("words: the run's word_vocab.txt")
    assert hf["tokenizer"] == "Hugging Face tokenizer folder bert"  # the teacher's own checkpoint folder


def test_lm_metadata_gives_tokenizer_vocabulary_and_context(tmp_path):
    import torch

    from leankd.compress.onnx_metadata import onnx_metadata
    from leankd.tasks.causal_lm import build_lm_task
    from test_causal_lm import _data

    task = build_lm_task(_data(tmp_path), torch.device("cpu"), 0)
    meta = onnx_metadata(task, torch.nn.Identity())
    assert meta["task_kind"] == "causal_lm" and "class_names" not in meta  # token ids are not classes
    assert json.loads(meta["context"]) == 16 and json.loads(meta["vocab_size"]) == task.num_classes
    assert meta["tokenizer"] == f"characters ({task.num_classes} symbols) (lm_tokenizer.json)"
    assert all(isinstance(v, str) for v in meta.values())  # ONNX metadata_props are string pairs


def test_int8_files_get_the_fp32_files_metadata(tmp_path):
    """ORT quantization writes a new file: `copy_metadata` gives it the fp32 file's keys (replacing a key of the same
    name, keeping the others)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from leankd.compress.onnx_metadata import copy_metadata, read_metadata

    def model(path: Path, **meta: str) -> Path:
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        proto = helper.make_model(graph)
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(path))
        return path

    src = model(tmp_path / "fp32.onnx", mean="[0.5]", class_names='["a", "b"]')
    dst = model(tmp_path / "int8.onnx", mean="stale", quantized="yes")
    copy_metadata(src, dst)
    assert read_metadata(dst) == {"quantized": "yes", "mean": "[0.5]", "class_names": '["a", "b"]'}
    assert read_metadata(src) == {"mean": "[0.5]", "class_names": '["a", "b"]'}


def test_seq2seq_onnx_graphs_carry_both_vocabularies(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from leankd.compress.onnx_metadata import read_metadata
    from leankd.compress.targets import BuildContext
    from leankd.compress.targets.onnx_runtime import onnx_fp32
    from test_seq2seq import _model, _task

    task = _task(60)
    art = onnx_fp32(_model(task), BuildContext(task, tmp_path))
    encoder, step = (read_metadata(f) for f in art.files)
    assert (encoder["graph"], step["graph"]) == ("encoder", "decoder step")
    for meta in (encoder, step):
        assert json.loads(meta["source_symbols"]) == task.src_vocab.symbols  # input ids, in order
        assert json.loads(meta["class_names"]) == task.tgt_vocab.symbols  # output ids, in order
        assert meta["task_kind"] == "seq2seq" and json.loads(meta["max_decode_length"]) == task.max_len
