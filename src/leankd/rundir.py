"""Replacing a run directory's results only once their replacement is ready.

A re-run that fails (bad input, a crash, Ctrl-C, kill -9) must leave the finished run's report, its recipe and its
deployment artifacts as they were. So a run builds its artifacts into a staging folder beside `compressed/`, and
`commit` swaps everything in at the end, in this order: artifacts, then `report.json`, `report.md` and plots (each
written atomically; a plot the new report does not make is removed then, see `report.plots.write_plots`), then
`recipe.yaml` (the recipe that report describes; `leankd compress`/`export` leave it as it is), then what the new
report no longer uses. A kill between two of these steps leaves a report beside artifacts of the same name (the
only window, and a short one). A report of another recipe is first copied to `previous/<time>/`
(`keep_previous_report`): a run name re-used with new settings never loses its earlier results without a trace.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Optional

from .io import write_bytes_atomic, write_text_atomic

COMPRESSED = "compressed"
STAGING = ".compressed.partial"  # artifacts of the run in progress
RETIRED = ".compressed.old"  # the previous artifacts while the new ones are swapped in


def recover(run_dir: Path) -> None:
    """Undo what a kill in the middle of `commit` left: previous artifacts moved aside but the new ones not yet in
    place (the report on disk is still the previous one, so they go back), or a retired folder not yet removed."""
    current, retired = Path(run_dir) / COMPRESSED, Path(run_dir) / RETIRED
    if retired.is_dir():
        if current.exists():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(retired, current)


def staging_dir(run_dir: Path) -> Path:
    """An empty folder for this run's artifacts (a killed run's leftovers are removed first)."""
    staged = Path(run_dir) / STAGING
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def final_path(run_dir: Path, staged_file: Path) -> str:
    """Where a staged artifact file will live, relative to the run dir (what the report records)."""
    return str(Path(COMPRESSED) / Path(staged_file).relative_to(Path(run_dir) / STAGING))


PREVIOUS = "previous"  # earlier reports of this run directory whose recipe was different
KEPT = ("report.json", "report.md", "recipe.yaml")


def keep_previous_report(run_dir: Path, recipe_text: str) -> Optional[Path]:
    """Copy the finished report (report.json/.md, its recipe.yaml and plots) to `previous/<UTC time>/` when the new
    report describes another recipe, so re-using a run name never loses earlier results without a trace. Returns
    the folder, or None (no earlier report, or the same recipe: then the new report is an update of the same
    results, e.g. after `--force` or a re-measurement). Copies, atomically per file: the originals stay until the
    new report replaces them."""
    run_dir = Path(run_dir)
    old_recipe = run_dir / "recipe.yaml"
    if not (run_dir / "report.json").is_file() or not old_recipe.is_file():
        return None
    if old_recipe.read_text(encoding="utf-8") == recipe_text:
        return None
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    folder = run_dir / PREVIOUS / stamp
    n = 1
    while folder.exists():  # two commits within one second
        n += 1
        folder = run_dir / PREVIOUS / f"{stamp}-{n}"
    for path in [*(run_dir / name for name in KEPT), *sorted(run_dir.glob("*.png"))]:
        if path.is_file():
            write_bytes_atomic(folder / path.name, path.read_bytes())
    return folder


def commit(run_dir: Path, report: dict, recipe_text: Optional[str], *, artifacts: str, remove: Iterable[str] = ()
           ) -> Optional[Path]:
    """Put the finished run's results in place. `artifacts`: "replace" (compressed/ becomes exactly what this run
    staged: a full run), "merge" (staged files are added to compressed/, replacing files of the same name; earlier
    artifacts stay: `leankd compress`/`export` adding targets). `remove`: files (relative to the run dir) the new
    report no longer uses, deleted once it is written. Returns where an earlier report of another recipe was kept
    (`keep_previous_report`; only for a full run: adding artifacts extends the same results). `recipe_text` None:
    recipe.yaml stays as it is (`leankd compress`/`export` extend the run's results, not its recipe: the report's
    artifacts say what was added, and recipe.yaml remains the recipe the stages were trained from)."""
    from .report import write_markdown, write_plots, write_report

    run_dir = Path(run_dir)
    kept = keep_previous_report(run_dir, recipe_text) if artifacts == "replace" and recipe_text is not None else None
    staged, current, retired = run_dir / STAGING, run_dir / COMPRESSED, run_dir / RETIRED
    has_staged = staged.is_dir() and any(staged.iterdir())
    if artifacts == "merge" and has_staged:
        for src in sorted(p for p in staged.rglob("*") if p.is_file()):
            dst = current / src.relative_to(staged)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    elif artifacts == "replace" and has_staged:
        shutil.rmtree(retired, ignore_errors=True)
        if current.exists():
            os.replace(current, retired)
        os.replace(staged, current)
    write_report(run_dir, report)
    write_markdown(run_dir, report, plots=write_plots(report, run_dir))
    if recipe_text is not None:
        write_text_atomic(run_dir / "recipe.yaml", recipe_text)
    for rel in remove:
        stale = (run_dir / rel).resolve()
        if stale.is_relative_to((run_dir / COMPRESSED).resolve()) and stale.is_file():
            stale.unlink()
    if artifacts == "replace" and not has_staged:
        shutil.rmtree(current, ignore_errors=True)  # the new report has no artifacts: the old ones are stale now
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    return kept


def discard_staging(run_dir: Path) -> None:
    """A failed run's staged artifacts are of no use (the previous ones stay in compressed/)."""
    shutil.rmtree(Path(run_dir) / STAGING, ignore_errors=True)
