"""The report: versioned `report.json`, `report.md`, plots and run comparison."""
from leankd.report.compare import compare_runs
from leankd.report.console import render_console
from leankd.report.figures import compute_ratios
from leankd.report.markdown import render_markdown, write_markdown
from leankd.report.plots import write_plots
from leankd.report.schema import (
    SCHEMA_VERSION,
    Report,
    ReportSchemaError,
    build_report,
    load_report,
    validate_report,
    write_report,
)

__all__ = [
    "SCHEMA_VERSION",
    "Report",
    "ReportSchemaError",
    "build_report",
    "compare_runs",
    "compute_ratios",
    "load_report",
    "render_console",
    "render_markdown",
    "validate_report",
    "write_markdown",
    "write_plots",
    "write_report",
]
