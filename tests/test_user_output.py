"""What users read when output is not a terminal (a pipe, a file, CI) and how the leaderboard writes numbers:
whole lines and valid markdown, never tables cut to 80 columns with "…"; MACs as 864.4 K, floats of sampled
settings to 3 significant digits."""
from __future__ import annotations

from leankd.report.format import fmt_si
from leankd.search.leaderboard import settings_text, to_markdown
from test_failure_catalogue import cli, tiny_recipe, write_yaml


def test_si_counts_and_leaderboard_cells():
    assert [fmt_si(x) for x in (864_400, 12_500_000, 1_234_000_000, 512, None)] == [
        "864.4 K", "12.5 M", "1.2 G", "512", "—"]
    assert settings_text({"temperature": 3.987654321, "alpha": 0.5, "loss": "kd"}) == \
        "temperature=3.99, alpha=0.5, loss=kd"
    row = {"source": "runs/demo", "label": "KD student", "settings": "ResNet-8", "accuracy": 0.5445,
           "macs": 12_480_000, "params": 78_042, "size_mb": 0.3183, "latency_ms": 0.7812, "train_time_s": 42.4,
           "front": True, "latency_flag": None, "note": None}
    board = to_markdown([row])
    assert "| 54.45 % | 12.5 M | 78.0 K | 0.32 MB | 0.78 ms | 42.4 s | * |" in board
    loss_row = {**row, "accuracy": 2.0701, "latency_ms": None}
    assert "| 2.07 | 12.5 M |" in to_markdown([loss_row]) and "| — |" in to_markdown([loss_row])


def test_piped_compare_is_valid_markdown_and_long_lines_stay_whole(tmp_path):
    recipe = write_yaml(tmp_path / "r.yaml", tiny_recipe(tmp_path, name="a_run_name_long_enough_to_matter_" * 3))
    run = cli("run", recipe, "--quiet", env={"COLUMNS": ""})
    assert run.code == 0, run.text[-3000:]
    assert "…" not in run.out  # the result table, printed to a pipe: no cell cut short
    run_dir = next((tmp_path / "runs").iterdir())
    compared = cli("compare", run_dir, run_dir, env={"COLUMNS": ""})
    assert compared.code == 0, compared.text[-3000:]
    rows = [line for line in compared.out.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 6 and all(line.endswith("|") for line in rows), compared.out  # header, rule, 2 x 3 models
    assert len({line.count(" | ") for line in rows}) == 1  # one cell count: no row wrapped onto a second line
    others = [line for line in compared.out.splitlines() if line.strip() and not line.startswith("|")]
    assert all(" | " not in line for line in others)  # no fragment of a wrapped row below the table
    assert any(line.startswith("Best KD student") for line in others)  # the sentence is one whole line
    assert "…" not in compared.out
