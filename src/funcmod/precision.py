"""The floating-point dtypes funcmod compares in, the tolerances it holds them to, and running
JAX code in float64 only where it is asked for.

``RTOL`` is the one tolerance table: every check in funcmod takes its default from it. Errors
are ``funcmod.tree``'s per-leaf relative errors, ``max|actual - expected| / max|expected|``.

* ``'parity'``: one forward and backward pass of a port against its PyTorch twin (outputs,
  input gradients and parameter gradients), and two runs of the same JAX training split over a
  different number of devices or processes (the same mathematics, summed in another order).
* ``'trajectory'``: the parameters after every step of a whole training run in one framework
  against the other. float32 is looser here than for one pass: every step adds rounding of its
  own, and an optimizer such as Adam divides a gradient by its own magnitude, which passes a
  relative rounding error of a small gradient element on to the update unchanged.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np

__all__ = ["DTYPES", "RTOL", "float_dtype", "rtol", "x64_for"]

# The dtypes funcmod checks parity in, by name (the names the command line takes).
DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

RTOL: dict[str, dict[np.dtype, float]] = {
    "parity": {DTYPES["float32"]: 1e-5, DTYPES["float64"]: 1e-12},
    "trajectory": {DTYPES["float32"]: 1e-4, DTYPES["float64"]: 1e-12},
}


def float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` (a name, a numpy or JAX dtype) as a numpy dtype, if it is one funcmod checks in.

    Raises:
      ValueError: ``dtype`` is not float32 or float64; the message names it.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"expected float32 or float64, got {dtype!r}") from None
    if dt not in DTYPES.values():
        raise ValueError(f"expected float32 or float64, got {dt.name}")
    return dt


def rtol(kind: str, dtype: Any) -> float:
    """The default max relative error of a ``kind`` check (a key of ``RTOL``) in ``dtype``."""
    if kind not in RTOL:
        raise ValueError(f"unknown kind of check {kind!r}; expected one of {sorted(RTOL)}")
    return RTOL[kind][float_dtype(dtype)]


def x64_for(dtype: Any) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` for a 64-bit float ``dtype``, a no-op context otherwise.

    float32 work runs in whatever mode JAX is in; float64 work needs 64-bit JAX, or JAX would
    silently compute in float32.
    """
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()
