"""Running JAX code in float64 only where it is asked for."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np

__all__ = ["x64_for"]


def x64_for(dtype: Any) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` for a 64-bit float ``dtype``, a no-op context otherwise.

    float32 work runs in whatever mode JAX is in; float64 work needs 64-bit JAX, or JAX would
    silently compute in float32.
    """
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()
