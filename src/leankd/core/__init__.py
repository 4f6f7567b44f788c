"""Shared contracts at the bottom of the package: imported by everything, importing nothing above them.

`task.py` (`Batch`, the `Task` contract, `CpuView`, `predict`/`evaluate`), `teacher.py` (the `Teacher` protocol),
`fingerprint.py` (the stage fingerprint), `version.py` (`__version__`), `registry.py` (plug-in registries),
`params.py` (`Strict`, the base of recipe sections and plug-in parameter models).
Besides itself, core imports only `leankd.errors` and two leaf measurement modules (tests/test_architecture.py
checks it); this file imports nothing, so reading the version does not import torch."""
