"""leankd.core holds the shared contracts (issue 24): the old import paths still name the same objects, and the
stage fingerprint kept its exact output when it moved out of pipeline.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from leankd.core.fingerprint import fingerprint

# Computed by `leankd.pipeline.fingerprint` before it moved to leankd.core.fingerprint: every finished run directory
# holds such values (stage.json, cache folders), so a different value here would make every run on disk stale.
GOLDEN = [
    ({}, "9ab2253fc38981f5"),
    ({"stage": "teacher", "model": {"name": "resnet8", "kwargs": {}}, "seed": 0}, "cb21614d861cde08"),
    ({"cache": "teacher-logits", "data": {"source": "demo", "limit_train": None}, "teacher": "abc", "views": 4},
     "2adb84ddb30f597e"),
    ({"stage": "student", "loss": "kd(T=4.0) + 0.1*ce", "seed": 3, "path": Path("/tmp/x"), "x": 1.5},
     "a31866a3b12657bb"),
    ({"b": [1, 2, (3, 4)], "a": {"z": True, "y": "Grüße ☃"}, "v": 2}, "1f59f6e8dfe5954d"),
]


@pytest.mark.parametrize("obj,expected", GOLDEN)
def test_fingerprint_output_is_unchanged(obj, expected):
    assert fingerprint(obj) == expected


def test_old_import_paths_name_the_core_objects():
    import leankd
    import leankd.core.task as task
    import leankd.core.teacher as teacher
    import leankd.core.version as version
    from leankd import pipeline, tasks
    from leankd.kd import teacher as kd_teacher
    from leankd.tasks import base
    from leankd.train import loop

    assert base.Batch is task.Batch and base.Task is task.Task and base.CpuView is task.CpuView
    assert tasks.Batch is task.Batch and tasks.Task is task.Task
    assert loop.evaluate is task.evaluate and loop.predict is task.predict
    assert kd_teacher.Teacher is teacher.Teacher
    assert pipeline.fingerprint is fingerprint
    assert leankd.__version__ == version.__version__


def test_report_stamps_the_package_version():
    from leankd.core.version import __version__
    from leankd.report.schema import _leankd_version

    assert _leankd_version() == __version__
