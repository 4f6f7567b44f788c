"""benchmarks/gpu_suite.py: the budget it enforces (a part that no longer fits is skipped and recorded, a part that
runs is recorded with its wall time, one that overruns is killed at the budget, children included), and — slow — the
real `--smoke` run end to end, so the suite works the first time it meets a GPU."""
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


suite = load(ROOT / "benchmarks" / "gpu_suite.py", "gpu_suite_under_test")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_parts_run_in_order_and_an_overrunning_estimate_is_skipped_with_a_note(tmp_path):
    marker = tmp_path / "ran.txt"
    parts = [
        suite.Part("first", "sleeps briefly", 1, py("import time; time.sleep(0.3); print('hello from first')"),
                   read=lambda: {"figure": 42}),
        suite.Part("too_big", "would need an hour", 3600, py(f"open({str(marker)!r}, 'w').write('x')")),
        suite.Part("broken", "exits 3", 1, py("import sys; print('boom'); sys.exit(3)")),
        suite.Part("absent", "not on this machine", 1, None, note="needs 2 GPUs"),
    ]
    log = tmp_path / "parts.log"
    records = suite.run_parts(parts, budget_s=60, log_path=log, started=time.monotonic())

    assert [r["name"] for r in records] == ["first", "too_big", "broken", "absent"]
    first, too_big, broken, absent = records
    assert first["status"] == "ok" and first["wall_s"] >= 0.3 and first["result"] == {"figure": 42}
    assert "sleep" in first["command"]
    assert too_big["status"] == "skipped" and too_big["wall_s"] is None
    assert "estimated 3600 s" in too_big["note"] and "left" in too_big["note"]
    assert not marker.exists()  # never started, not half-run
    assert broken["status"] == "failed" and broken["note"] == "exit 3" and "boom" in broken["log_tail"]
    assert absent["status"] == "skipped" and absent["note"] == "needs 2 GPUs"
    text = log.read_text()
    assert "hello from first" in text and "===== broken: exit 3" in text and "too_big" not in text


def test_elapsed_time_counts_against_the_budget(tmp_path):
    """A part that fits an empty budget is skipped once earlier time has used it up."""
    started = time.monotonic() - 50  # 50 of 60 s already spent
    records = suite.run_parts([suite.Part("late", "needs 20 s", 20, py("pass"))], 60, tmp_path / "l.log", started)
    assert records[0]["status"] == "skipped" and "20 s" in records[0]["note"]


def test_a_part_still_running_at_the_budget_is_killed_with_its_children(tmp_path):
    child_pid = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(child_pid)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    t0 = time.monotonic()
    records = suite.run_parts([suite.Part("slow", "underestimated", 0.5, py(code), read=lambda: {"x": 1})], 2.0,
                              tmp_path / "l.log", time.monotonic())
    rec = records[0]
    assert rec["status"] == "killed at budget" and 1.5 < rec["wall_s"] < 20 and "killed" in rec["note"]
    assert "result" not in rec  # a killed part has no figures to read
    assert time.monotonic() - t0 < 30
    pid = int(child_pid.read_text())
    for _ in range(50):  # the grandchild went with the process group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the part's child process {pid} survived the kill")


def test_bad_arguments_are_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit) as e:
        suite.parse_args(["--out", "x", "--only", "kd_speed,warp_drive"])
    assert e.value.code == 2 and "warp_drive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        suite.parse_args(["--out", "x", "--budget", "0"])
    assert e.value.code == 2 and "--budget" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").exists() and not (ROOT / ".gpu").exists(),
                    reason="needs ../shared/datasets (CIFAR-10 JPEGs, Tiny Shakespeare) or .gpu/")
def test_smoke_run_end_to_end(tmp_path):
    """Every part on the CPU on tiny data, as on the GPU: the suite writes both files with each part's status.
    (No torchdistill venv here: kd_speed records that contestant as missing, the others run.)"""
    out = tmp_path / "out"
    summary = suite.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "600"])
    data = json.loads((out / "gpu_suite.json").read_text())
    md = (out / "gpu_suite.md").read_text()
    status = {p["name"]: p["status"] for p in data["parts"]}
    assert status == {"data": "ok", "kd_speed": "ok", "fast_distill": "ok", "lm": "ok", "ddp_scaling": "ok"}, \
        [(p["name"], p.get("note"), p.get("log_tail")) for p in data["parts"]]
    assert data == summary and data["environment"]["torch"] and data["mode"] == "smoke"
    parts = {p["name"]: p for p in data["parts"]}
    rows = {r["contestant"]: r for r in parts["kd_speed"]["result"]["rows"]}
    for name in ("plain", "leankd", "leankd_cached"):
        assert rows[name]["epoch_s"] > 0, rows[name]
    fast = parts["fast_distill"]["result"]
    assert 0 <= fast["student_accuracy"] <= 1 and fast["student_train_s"] > 0 and fast["cache_views"] == 2
    assert fast["target_met"] is False  # 256 images, one epoch
    assert set(parts["lm"]["result"]) >= {"teacher", "student"}
    assert all(p["wall_s"] > 0 for p in data["parts"]) and "## fast_distill" in md and "| kd_speed | ok |" in md
    assert sorted(f.name for f in out.iterdir()) == ["gpu_suite.json", "gpu_suite.md", "gpu_suite_parts.log"]
