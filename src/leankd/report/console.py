"""The terminal view of a report (`leankd run` / `leankd report`): the main table and the deployment table as
`rich` tables, from the same rows as `report.md`. Split from `markdown` (issue 24); rich is imported only here,
and only when a table is drawn."""
from __future__ import annotations

from typing import Any

from leankd.report.format import TIMES, _g, _is_num, fmt_points
from leankd.report.schema import validate_report
from leankd.report.seeds_text import _paired_seeds, _paired_stats
from leankd.report.tables import deployment_table_rows, main_table_rows
from leankd.report.verdict import sanity_console_caption


def render_console(report: dict):
    """The main table as a compact `rich.table.Table` (print it with `rich.console.Console().print`)."""
    from rich.table import Table

    report = validate_report(report)
    header, rows = main_table_rows(report)
    table = Table(title=f"leankd: {report['run']['name']}", show_lines=False, pad_edge=False)
    table.add_column(header[0], style="bold", no_wrap=True)
    for h in header[1:]:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    gain = _g(report, "ratios", "kd_gain_points")
    paired = _paired_seeds(report)
    if paired:
        table.caption = f"KD gain over baseline: {_paired_stats(paired)}"
    elif _is_num(gain):
        table.caption = f"KD gain over baseline: {fmt_points(gain)} points (one seed)"
    table.caption = sanity_console_caption(report) or table.caption
    return table


def render_console_deployment(report: dict):
    """The deployment-artifact table for the console, or None when the run made no artifacts."""
    from rich.table import Table

    found = deployment_table_rows(validate_report(report))
    if not found:
        return None
    header, rows = found
    # an 80-column terminal fits these; report.md has the rest (format, max |Δ logit|, left in float, × faster at
    # the smaller batch sizes)
    faster = [h for h in header if h.startswith(f"{TIMES} faster")]
    dropped = {"format", "left in float", "max |Δ logit|", *faster[:-1]}
    keep = [i for i, h in enumerate(header) if h not in dropped]
    table = Table(title="deployment artifacts (vs the fp32 model)", pad_edge=False)
    for i in keep:
        table.add_column(header[i], justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*[r[i] for i in keep])
    return table


def print_console(report: dict, console: Any = None) -> None:
    from rich.console import Console

    (console or Console()).print(render_console(report))
