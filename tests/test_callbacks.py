"""Callbacks, loggers and the overall progress (issue 27): a user's callback sees a run's events in order, the
TensorBoard event files and the MLflow store hold exactly metrics.jsonl's numbers, `logging:` changes neither
metrics.jsonl nor any fingerprint, and `distill()` has progress, callbacks, loggers and resume."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import leankd
from leankd.callbacks import Callback
from leankd.callbacks.eta import Eta, format_eta
from leankd.errors import LeanKDError

from test_failure_catalogue import tiny_recipe

TIMING = {"epoch_time_s", "samples_per_s"}


class Recorder(Callback):
    """Every event, in order, with the numbers a test checks."""

    def __init__(self):
        self.events = []

    def on_run_start(self, run_dir, plan):
        self.events.append(("run_start", dict(plan)))

    def on_stage_start(self, stage, info):
        self.events.append(("stage_start", stage, bool(info.get("reused")), info.get("start_epoch", 0)))

    def on_epoch_end(self, stage, row):
        self.events.append(("epoch_end", stage, row["epoch"], row["train_loss"]))

    def on_stage_end(self, stage, info):
        self.events.append(("stage_end", stage, bool(info.get("reused"))))

    def on_artifact(self, path, kind):
        self.events.append(("artifact", str(path), kind))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _recipe(tmp_path: Path, **extra) -> dict:
    return tiny_recipe(tmp_path, baseline=False, **extra)  # teacher + KD student: two stages, seconds each


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny run with every offline logger and a recording callback."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("logged")
    rec = Recorder()
    result = leankd.run(_recipe(tmp, logging=["tensorboard", "mlflow", "csv"]), callbacks=[rec], quiet=True,
                        console=Console(file=io.StringIO()))
    return result.run_dir, rec


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same recipe without loggers, in its own run directory."""
    tmp = tmp_path_factory.mktemp("plain")
    result = leankd.run(_recipe(tmp), quiet=True, console=Console(file=io.StringIO()))
    return tmp, result.run_dir


def test_callback_sees_the_run_in_order(logged):
    run_dir, rec = logged
    teacher_rows, student_rows = rows(run_dir / "teacher" / "metrics.jsonl"), rows(run_dir / "student" / "metrics.jsonl")
    assert rec.events == [
        ("run_start", {"teacher": 1, "student": 1}),
        ("stage_start", "teacher", False, 0),
        ("epoch_end", "teacher", 1, teacher_rows[0]["train_loss"]),
        ("artifact", str(run_dir / "teacher" / "model.safetensors"), "weights"),
        ("stage_end", "teacher", False),
        ("stage_start", "student", False, 0),
        ("epoch_end", "student", 1, student_rows[0]["train_loss"]),
        ("artifact", str(run_dir / "student" / "model.safetensors"), "weights"),
        ("stage_end", "student", False),
        ("artifact", str(run_dir / "report.json"), "report"),
        ("artifact", str(run_dir / "report.md"), "report"),
    ]


def test_tensorboard_scalars_equal_metrics_jsonl(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = logged
    for stage in ("teacher", "student"):
        acc = EventAccumulator(str(run_dir / "logs" / "tensorboard" / stage))
        acc.Reload()
        (row,) = rows(run_dir / stage / "metrics.jsonl")
        numbers = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        assert set(numbers) <= set(acc.Tags()["scalars"])
        for key, value in numbers.items():
            (event,) = acc.Scalars(key)
            assert event.step == 1
            assert event.value == pytest.approx(value, rel=1e-6)  # stored as float32


def test_mlflow_store_holds_params_and_metrics(logged):
    from mlflow.tracking import MlflowClient

    run_dir, _ = logged
    ids = json.loads((run_dir / "logs" / "mlflow.json").read_text())
    assert set(ids) == {"teacher", "student"}
    client = MlflowClient(tracking_uri=ids["student"]["tracking_uri"])
    assert ids["student"]["tracking_uri"] == f"sqlite:///{(run_dir / 'logs' / 'mlflow.db').resolve()}"
    run = client.get_run(ids["student"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "student"
    assert run.data.params["train.epochs"] == "1" and run.data.params["train.batch_size"] == "16"
    assert run.data.params["loss"] == "0.9*kd(T=4) + 0.1*ce"
    assert run.data.params["fingerprint"] == json.loads((run_dir / "student" / "stage.json").read_text())["fingerprint"]
    (row,) = rows(run_dir / "student" / "metrics.jsonl")
    expected = {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
    assert run.data.metrics == pytest.approx(expected)
    (point,) = client.get_metric_history(run.info.run_id, "train_loss")
    assert point.step == 1


def test_csv_logger_writes_the_epoch_rows(logged):
    import csv

    run_dir, _ = logged
    with open(run_dir / "logs" / "csv" / "teacher.csv", newline="") as f:
        (got,) = list(csv.DictReader(f))
    (row,) = rows(run_dir / "teacher" / "metrics.jsonl")
    assert {k: float(v) for k, v in got.items() if v} == pytest.approx(
        {k: float(v) for k, v in row.items() if v is not None})


def test_metrics_jsonl_is_the_same_with_loggers(logged, plain):
    """Byte for byte, timing fields aside: the loggers add files, they do not change the run's record."""
    run_dir, _ = logged
    _, plain_dir = plain
    for stage in ("teacher", "student"):
        a, b = (run_dir / stage / "metrics.jsonl").read_text(), (plain_dir / stage / "metrics.jsonl").read_text()
        strip = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in a.splitlines()]
        assert strip == [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in b.splitlines()]
        assert list(json.loads(a.splitlines()[0])) == list(json.loads(b.splitlines()[0]))  # same keys, same order
    assert not (plain_dir / "logs").exists()
    assert "logging" not in (plain_dir / "recipe.yaml").read_text()  # recipe.yaml as before when unset


def test_adding_logging_retrains_nothing(plain):
    """`logging:` is in no fingerprint: the finished run is reused stage by stage, and the logger sees no epoch."""
    pytest.importorskip("tensorboard")
    tmp, run_dir = plain
    before = {p: (run_dir / p / "model.safetensors").read_bytes() for p in ("teacher", "student")}
    rec = Recorder()
    leankd.run(_recipe(tmp, logging=["tensorboard"]), callbacks=[rec], quiet=True, console=Console(file=io.StringIO()))
    assert [e for e in rec.events if e[0] in ("stage_start", "epoch_end")] == [
        ("stage_start", "teacher", True, 0), ("stage_start", "student", True, 0)]
    assert {p: (run_dir / p / "model.safetensors").read_bytes() for p in before} == before
    assert not (run_dir / "logs" / "tensorboard").exists()  # nothing trained, nothing logged


def test_eta_from_epochs_done_and_times():
    """Plan 2 + 3 epochs; a reused first stage counts as done without time. After one trained epoch of 10 s: 2 left
    at 10 s each. Half-way through the next epoch (6 s so far): rate (10 + 6) / 1.5, 1.5 epochs left -> 16 s."""
    eta = Eta({"teacher": 2, "student": 3})
    assert eta.eta() is None and format_eta(eta.eta()) == "-:--"
    eta.stage_reused("teacher")
    eta.stage_start("student", 3)
    assert eta.completed == 2 and eta.eta() is None
    eta.epoch_end("student", 10.0)
    assert eta.completed == 3 and eta.eta() == pytest.approx(20.0)
    eta.step(0.5, 6.0)
    assert eta.completed == 3.5 and eta.eta() == pytest.approx(1.5 * 16 / 1.5)
    assert format_eta(3723) == "1:02:03" and format_eta(65.4) == "1:05"


def test_eta_resumed_stage_counts_its_done_epochs():
    eta = Eta({"student": 4})
    eta.stage_start("student", 4, already_done=3)  # resumed after epoch 3: those took no time in this process
    eta.epoch_end("student", 8.0)
    assert eta.completed == 4 and eta.eta() == 0.0
    eta = Eta({"student": 4})
    eta.stage_start("student", 4, already_done=1)
    eta.epoch_end("student", 8.0)
    assert eta.eta() == pytest.approx(16.0)  # 2 epochs left at the 8 s the one timed epoch took


# ------------------------------------------------------------------------------------------------ distill()
def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _distill(tmp_path, **kw):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    student = nn.Linear(8, 3)
    return leankd.distill(teacher, student, _data(64, 0), _data(32, 1), epochs=2, batch_size=16, device="cpu",
                          measure={"latency_runs": 30, "latency_warmup": 0, "latency_batch_sizes": [1]}, **kw)


def test_distill_progress_and_quiet(tmp_path):
    out = io.StringIO()
    _distill(tmp_path, console=Console(file=out, width=200), baseline=False)
    text = out.getvalue()
    assert "student epoch   2/2" in text and "2/2 epochs (100%)  ETA 0:00" in text  # plain lines: not a terminal
    out = io.StringIO()
    _distill(tmp_path, console=Console(file=out, width=200), baseline=False, quiet=True)
    assert "epoch" in out.getvalue()  # quiet: the epoch lines stay (as leankd run --quiet), no bars
    assert "ETA" in out.getvalue()


def test_distill_callbacks_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(InterruptedError):
        _distill(tmp_path, run_dir=run_dir, quiet=True, stop_after_epoch=1)
    assert (run_dir / "baseline" / "checkpoint.safetensors").exists()
    assert [r["epoch"] for r in rows(run_dir / "baseline" / "metrics.jsonl")] == [1]
    with pytest.raises(LeanKDError, match="resume=True"):  # an interrupted call is not silently started over
        _distill(tmp_path, run_dir=run_dir, quiet=True)
    rec = Recorder()
    result = _distill(tmp_path, run_dir=run_dir, quiet=True, resume=True, callbacks=[rec])
    assert [e for e in rec.events if e[0] in ("run_start", "stage_start", "epoch_end", "stage_end")] == [
        ("run_start", {"baseline": 2, "student": 2}),
        ("stage_start", "baseline", False, 1),
        ("epoch_end", "baseline", 2, rows(run_dir / "baseline" / "metrics.jsonl")[1]["train_loss"]),
        ("stage_end", "baseline", False),
        ("stage_start", "student", False, 0),
        ("epoch_end", "student", 1, rows(run_dir / "student" / "metrics.jsonl")[0]["train_loss"]),
        ("epoch_end", "student", 2, rows(run_dir / "student" / "metrics.jsonl")[1]["train_loss"]),
        ("stage_end", "student", False),
    ]
    assert [r["epoch"] for r in rows(run_dir / "baseline" / "metrics.jsonl")] == [1, 2]
    assert not (run_dir / "baseline" / "checkpoint.safetensors").exists()
    rec = Recorder()  # resumed again: both stages finished with the same settings are loaded, nothing trains
    _distill(tmp_path, run_dir=run_dir, quiet=True, resume=True, callbacks=[rec])
    assert [e for e in rec.events if e[0] in ("stage_start", "epoch_end")] == [
        ("stage_start", "baseline", True, 0), ("stage_start", "student", True, 0)]


def test_distill_resume_needs_a_run_dir(tmp_path):
    with pytest.raises(LeanKDError, match="run_dir="):
        _distill(tmp_path, resume=True)


def test_distill_report_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    _distill(tmp_path, run_dir=run_dir, quiet=True, baseline=False, report_to=["tensorboard"])
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard" / "student"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx(
        [r["train_loss"] for r in rows(run_dir / "student" / "metrics.jsonl")], rel=1e-6)
    with pytest.raises(LeanKDError, match="run_dir"):  # file loggers need a place for their files
        _distill(tmp_path, quiet=True, report_to=["tensorboard"])


def test_step_events_are_thinned_per_callback():
    """`every_n_steps` counts steps, whichever steps the loop reports (every one on a CPU, every 20th on a GPU)."""
    from leankd.callbacks import CallbackList

    class Steps(Callback):
        every_n_steps = 3

        def __init__(self):
            self.seen = []

        def on_step_end(self, stage, step, metrics):
            self.seen.append((stage, step))

    thin, every = Steps(), Steps()
    every.every_n_steps = 1
    events = CallbackList([thin, every])
    for step in range(1, 11):
        events.on_step_end("student", step, {})
    for step in (1, 21, 41):  # a GPU run's reports
        events.on_step_end("teacher", step, {})
    assert thin.seen == [("student", s) for s in (1, 4, 7, 10)] + [("teacher", s) for s in (1, 21, 41)]
    assert len(every.seen) == 13


def test_a_callback_that_is_not_one_is_refused():
    from leankd.callbacks import CallbackList

    with pytest.raises(LeanKDError, match="not a leankd.callbacks.Callback"):
        CallbackList([object()])


def test_resumed_stage_continues_its_tensorboard_steps_and_mlflow_run(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    with pytest.raises(InterruptedError):
        _distill(tmp_path, run_dir=run_dir, quiet=True, baseline=False, stop_after_epoch=1,
                 report_to=["tensorboard", "mlflow"])
    first = json.loads((run_dir / "logs" / "mlflow.json").read_text())["student"]["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'logs' / 'mlflow.db').resolve()}")
    assert client.get_run(first).info.status == "KILLED"
    _distill(tmp_path, run_dir=run_dir, quiet=True, baseline=False, resume=True, report_to=["tensorboard", "mlflow"])
    ids = json.loads((run_dir / "logs" / "mlflow.json").read_text())
    assert ids["student"]["run_id"] == first and client.get_run(first).info.status == "FINISHED"
    losses = [r["train_loss"] for r in rows(run_dir / "student" / "metrics.jsonl")]
    history = client.get_metric_history(first, "train_loss")
    assert [(p.step, p.value) for p in history] == [(1, pytest.approx(losses[0])), (2, pytest.approx(losses[1]))]
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard" / "student"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [
        (1, pytest.approx(losses[0], rel=1e-6)), (2, pytest.approx(losses[1], rel=1e-6))]


def test_live_bars_on_a_terminal(tmp_path):
    """On a terminal the overall bar (with its ETA) and the epoch bar are drawn live; the epoch lines stay, the plain
    overall lines are not printed (the bar shows it)."""
    out = io.StringIO()
    _distill(tmp_path, console=Console(file=out, width=160, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "run epochs" in text and "ETA" in text and "baseline epoch 1/2" in text  # drawn by the live display
    assert "student epoch   2/2" in text  # the summary line
    assert "epochs (100%)" not in text
