"""The exception for user-fixable compression problems (PyTorch-side: half precision and dynamic int8)."""
from __future__ import annotations

from ..errors import LeanKDError


class CompressionError(LeanKDError):
    """A model cannot be converted, saved or loaded as a compressed artifact; the message names the fix."""
