"""`tensorboard`: `torch.utils.tensorboard` event files in `<run>/logs/tensorboard/<stage>/`; each epoch row's numbers
at step = epoch (a resumed stage continues from its checkpoint's epoch) and the running loss every 50 steps under
`step/`. View: `tensorboard --logdir RUN/logs/tensorboard`."""
from __future__ import annotations

from . import LOGGERS, Logger, scalars


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    requires = "tensorboard"
    extra = "logging"

    def __init__(self, run_dir, run_name):
        super().__init__(run_dir, run_name)
        self.writers = {}

    def writer(self, stage):
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[stage] = SummaryWriter(log_dir=str(self.logs_dir("tensorboard", stage)))
        return self.writers[stage]

    def on_step_end(self, stage, step, metrics):
        for key, value in scalars(metrics).items():
            self.writer(stage).add_scalar(f"step/{key}", value, step)

    def on_epoch_end(self, stage, row):
        w = self.writer(stage)
        for key, value in scalars(row).items():
            w.add_scalar(key, value, row["epoch"])
        w.flush()

    def on_stage_end(self, stage, info):
        w = self.writers.pop(stage, None)
        if w is not None:
            w.close()

    def close(self):
        for w in self.writers.values():
            w.close()
        self.writers = {}
