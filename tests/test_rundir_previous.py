"""Re-using a run name with another recipe keeps the earlier report (previous/<time>/) instead of silently
replacing it; the same recipe (a re-run, --force, a re-measurement) updates the report in place."""
from __future__ import annotations

import json

from leankd.rundir import PREVIOUS, keep_previous_report
from test_failure_catalogue import cli, snapshot, tiny_recipe, write_yaml


def _finished(run_dir, recipe_text="name: a\n"):
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text('{"x": 1}')
    (run_dir / "report.md").write_text("# report")
    (run_dir / "recipe.yaml").write_text(recipe_text)
    (run_dir / "curves.png").write_bytes(b"\x89PNG")
    return snapshot(run_dir)


def test_the_same_recipe_keeps_nothing_another_recipe_keeps_the_report_and_plots(tmp_path):
    run = tmp_path / "run"
    before = _finished(run)
    assert keep_previous_report(run, "name: a\n") is None
    assert not (run / PREVIOUS).exists()
    kept = keep_previous_report(run, "name: b\n")
    assert kept.parent == run / PREVIOUS
    assert snapshot(kept) == before  # every file of the earlier report, byte for byte
    assert {k: v for k, v in snapshot(run).items() if not k.startswith(PREVIOUS)} == before  # originals stay
    second = keep_previous_report(run, "name: c\n")  # within the same second: its own folder
    assert second != kept and second.is_dir()
    assert keep_previous_report(tmp_path / "fresh", "name: a\n") is None  # nothing finished there


def test_rerunning_a_run_name_with_another_recipe_keeps_the_earlier_report(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    first = cli("run", recipe, "--quiet")
    assert first.code == 0, first.text[-3000:]
    run = tmp_path / "runs" / "tiny"
    same = cli("run", recipe, "--quiet")  # everything reused: the same results, updated in place
    assert same.code == 0 and not (run / PREVIOUS).exists()
    report = (run / "report.json").read_text()
    again = cli("run", recipe, "--quiet", "--set", "distill.temperature=2")
    assert again.code == 0, again.text[-3000:]
    assert "kept in previous/" in " ".join(again.text.split())
    (kept,) = (run / PREVIOUS).iterdir()
    assert (kept / "report.json").read_text() == report
    assert "temperature: 2" not in (kept / "recipe.yaml").read_text()
    assert json.loads((run / "report.json").read_text()) != json.loads(report)
