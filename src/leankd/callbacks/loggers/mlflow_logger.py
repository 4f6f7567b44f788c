"""`mlflow`: one MLflow run per stage (experiment = the run's name), in MLFLOW_TRACKING_URI when set, else a local
SQLite store `<run>/logs/mlflow.db` (`mlflow ui --backend-store-uri sqlite:///RUN/logs/mlflow.db`). Not a `mlruns/`
file store: MLflow 3 refuses new file stores (it keeps them in maintenance mode). Params: the stage's model, loss and training
settings; metrics: each epoch row's numbers at step = epoch. A resumed stage logs into the same MLflow run (its id is
kept in `<run>/logs/mlflow.json`)."""
from __future__ import annotations

import json
import os

from ...io import write_json_atomic
from . import LOGGERS, Logger, scalars


@LOGGERS.register("mlflow")
class MLflowLogger(Logger):
    requires = "mlflow"
    extra = "logging"

    def __init__(self, run_dir, run_name):
        super().__init__(run_dir, run_name)
        self.active: dict[str, str] = {}  # stage -> MLflow run id
        self._client = None

    @property
    def tracking_uri(self) -> str:
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        path = self.logs_dir("mlflow.db").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    def client(self):
        if self._client is None:
            import logging

            from mlflow.tracking import MlflowClient

            for name in ("mlflow", "alembic"):  # their INFO lines (creating tables...) are not the run's output
                logging.getLogger(name).setLevel(logging.WARNING)

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _ids_path(self):
        return self.logs_dir("mlflow.json")

    def _ids(self) -> dict:
        path = self._ids_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def on_stage_start(self, stage, info):
        if info.get("reused"):
            return
        client = self.client()
        ids = self._ids()
        run_id = ids.get(stage, {}).get("run_id") if info.get("start_epoch") else None
        if run_id is not None:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - the store was moved or wiped: a new MLflow run, said in its tags
                run_id = None
        if run_id is None:
            experiment = client.get_experiment_by_name(self.run_name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.run_name)
            run_id = client.create_run(experiment_id, run_name=stage, tags={"leankd.stage": stage,
                                                                          "leankd.run_dir": str(self.run_dir)}
                                       ).info.run_id
            for key, value in (info.get("params") or {}).items():
                client.log_param(run_id, key, value)
            write_json_atomic(self._ids_path(), {**ids, stage: {"run_id": run_id, "tracking_uri": self.tracking_uri}})
        self.active[stage] = run_id

    def on_epoch_end(self, stage, row):
        run_id = self.active.get(stage)
        if run_id is None:
            return
        for key, value in scalars(row).items():
            self.client().log_metric(run_id, key, value, step=int(row["epoch"]))

    def on_stage_end(self, stage, info):
        run_id = self.active.pop(stage, None)
        if run_id is not None:
            self.client().set_terminated(run_id, "FINISHED")

    def close(self):  # a run that stopped mid-stage (killed, pruned): its MLflow runs are marked so, resumable
        for run_id in self.active.values():
            self.client().set_terminated(run_id, "KILLED")
        self.active = {}
