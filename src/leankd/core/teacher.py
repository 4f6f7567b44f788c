"""The teacher contract: a function from a batch to logits. The student's loop cannot tell a live teacher from a
cached one (issue: cheap distillation), so anything that maps `Batch -> Tensor` can stand here. The teachers
themselves (`LiveTeacher`, `GuideEnsemble`, `CachedTeacher`) live in `leankd.kd`."""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .task import Batch


class Teacher(Protocol):
    def __call__(self, batch: Batch) -> Tensor: ...


__all__ = ["Teacher"]
