"""`csv`: each stage's epoch rows as `<run>/logs/csv/<stage>.csv` (for spreadsheets and pandas). The run's own
record stays `<stage>/metrics.jsonl`, written by the loop whatever is selected."""
from __future__ import annotations

import csv
import io

from ...io import write_text_atomic
from . import LOGGERS, Logger


@LOGGERS.register("csv")
class CSVLogger(Logger):
    def __init__(self, run_dir, run_name):
        super().__init__(run_dir, run_name)
        self.rows: dict[str, list[dict]] = {}

    def on_stage_start(self, stage, info):
        if not info.get("reused"):
            self.rows[stage] = list(info.get("history") or [])  # a resumed stage keeps its earlier epochs

    def on_epoch_end(self, stage, row):
        rows = self.rows.setdefault(stage, [])
        rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.logs_dir("csv", f"{stage}.csv"), out.getvalue())
