"""PyTorch's channels-first and Flax's channels-last image layouts."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LAYOUTS", "to_channels_first", "to_channels_last"]

# Channels-first layouts PyTorch uses, by name; None means "no image axes, leave as is".
LAYOUTS = {"NCL": 3, "NCHW": 4, "NCDHW": 5}


def _check(a: Any, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)} or None")
    if np.ndim(a) != LAYOUTS[layout]:
        raise ValueError(
            f"a {layout} array must have {LAYOUTS[layout]} dimensions, got shape {np.shape(a)}"
        )


def to_channels_last(a: Any, layout: str | None) -> Any:
    """PyTorch layout -> Flax layout: ``NCHW -> NHWC`` (and NCL, NCDHW likewise)."""
    if layout is None:
        return a
    _check(a, layout)
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.moveaxis(a, 1, -1)  # N C *S -> N *S C


def to_channels_first(a: Any, layout: str | None) -> Any:
    """Flax layout -> PyTorch layout: ``NHWC -> NCHW`` (and NLC, NDHWC likewise)."""
    if layout is None:
        return a
    _check(a, layout)
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.moveaxis(a, -1, 1)  # N *S C -> N C *S
