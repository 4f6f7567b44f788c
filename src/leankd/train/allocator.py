"""CPU training: keep glibc's malloc from handing memory back to the OS every step.

Measured on a 2-core CPU (FIELD-NOTES, ResNet-56 -> ResNet-20 KD, batch 128): each step frees and re-allocates
tens of MB of activations; with glibc's default, dynamic thresholds those come from fresh mmaps and are trimmed
back on every free — ~60k minor page faults per step, which made online KD ~12 % slower than a plain loop. Raising
both thresholds (trim at 1 GiB, mmap only above 32 MiB, the largest allowed on 64-bit) keeps the freed pages in the
heap for the next step; one threshold alone made steps 3x slower, so both are set or neither.

`mallopt` sets what `GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_threshold=...` would at start-up,
but from inside the process, for any way leankd is started. Elsewhere (macOS, musl, Windows) it does nothing.
`LEANKD_MALLOC_TUNING=0` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
TRIM_BYTES, MMAP_BYTES = 1 << 30, 32 << 20

_applied: Optional[bool] = None


def tune() -> bool:
    """Raise glibc's trim and mmap thresholds once per process; True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("LEANKD_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES))
    return _applied


DESCRIPTION = "glibc malloc keeps freed memory between steps (trim 1 GiB, mmap 32 MiB)"
