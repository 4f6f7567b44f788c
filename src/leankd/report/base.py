"""What every part of the report schema shares: the model roles, their default labels, the `batch_<n>` latency key
and the strict base model. Kept in its own module so that the run and model-entry models (`run_info`, `entry`), the
derived figures (`figures`) and the schema that assembles them (`schema`) can all import it without importing each
other."""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

TEACHER_ROLE = "teacher"
BASELINE_ROLE = "baseline"
STUDENT_ROLE = "student"

DEFAULT_LABELS = {TEACHER_ROLE: "Teacher", BASELINE_ROLE: "Baseline student", STUDENT_ROLE: "KD student",
                  "logit_kd": "KD student, logits only"}

_BATCH_KEY = re.compile(r"^batch_(\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
