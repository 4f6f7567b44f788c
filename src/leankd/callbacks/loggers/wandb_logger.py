"""`wandb`: Weights & Biases, one W&B run per stage (project = the run's name), files under `<run>/logs/`. Offline
mode when no API key is configured (WANDB_API_KEY unset and WANDB_MODE unset): `wandb sync` uploads later. A resumed
stage continues its W&B run (its id is kept in `<run>/logs/wandb.json`). Not exercised by leankd's tests (wandb is not
installed in its CI)."""
from __future__ import annotations

import json
import os

from ...io import write_json_atomic
from . import LOGGERS, Logger, scalars


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    requires = "wandb"
    extra = "wandb"

    def __init__(self, run_dir, run_name):
        super().__init__(run_dir, run_name)
        self.runs = {}

    def on_stage_start(self, stage, info):
        if info.get("reused"):
            return
        import wandb

        path = self.logs_dir("wandb.json")
        ids = json.loads(path.read_text()) if path.exists() else {}
        run_id = ids.get(stage) if info.get("start_epoch") else None
        run_id = run_id or wandb.util.generate_id()
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.runs[stage] = wandb.init(project=self.run_name, name=stage, id=run_id, resume="allow", mode=mode,
                                      dir=str(path.parent), config=info.get("params") or {}, reinit=True)
        write_json_atomic(path, {**ids, stage: run_id})

    def on_epoch_end(self, stage, row):
        run = self.runs.get(stage)
        if run is not None:
            run.log({**scalars(row), "epoch": row["epoch"]})

    def on_stage_end(self, stage, info):
        run = self.runs.pop(stage, None)
        if run is not None:
            run.finish()

    def close(self):
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs = {}
