"""The one fingerprint of a stage, a cache or a data identity: a short hash of JSON-able settings.

Its output is part of every run directory on disk (`stage.json`, cache folders): a change here makes every
finished run look stale, so `FINGERPRINT_VERSION` is bumped only on purpose (tests/test_core_contracts.py pins a
few values)."""
from __future__ import annotations

import hashlib
import json

FINGERPRINT_VERSION = 1


def fingerprint(obj) -> str:
    blob = json.dumps({"v": FINGERPRINT_VERSION, **obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["FINGERPRINT_VERSION", "fingerprint"]
