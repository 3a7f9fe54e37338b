"""PyTorch's channels-first and Flax's channels-last image layouts, and the input checks the
ports run (at trace time, so they cost nothing under jit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LAYOUTS",
    "check_broadcastable",
    "check_channels_last",
    "check_last_dim",
    "check_real_floating",
    "inputs_to_channels_last",
    "to_channels_first",
    "to_channels_last",
]

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


def inputs_to_channels_last(
    inputs: Sequence[Any], layouts: Sequence[str | None]
) -> tuple[Any, ...]:
    """A model's inputs given in PyTorch's layout, each moved to the port's layout: an image
    ``NCHW -> NHWC`` (``layouts[i] == 'NCHW'``, likewise NCL and NCDHW), the rest as they are.

    Raises:
      ValueError: ``inputs`` and ``layouts`` differ in length, or an image has the wrong rank.
    """
    if len(inputs) != len(layouts):
        raise ValueError(f"{len(inputs)} inputs but {len(layouts)} layouts: {list(layouts)}")
    return tuple(to_channels_last(a, lay) for a, lay in zip(inputs, layouts, strict=True))


_CHANNELS_LAST = {1: "NLC", 2: "NHWC", 3: "NDHWC"}
_CHANNELS_FIRST = {1: "NCL", 2: "NCHW", 3: "NCDHW"}


def check_real_floating(module: str, x, arg: str = "x") -> None:
    """Raise ValueError unless ``x`` has a real floating dtype (bfloat16, float16, float32,
    float64). The ports with Linear or Conv layers call it: their PyTorch twins raise on complex
    and integer inputs (a dtype mismatch with the float weights), where JAX would promote the
    input and compute a complex or float result without a word."""
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{module}: expected {arg} of a real floating dtype (float32, float64, ...), "
            f"got {dtype.name}"
        )


def check_last_dim(module: str, x, expected: int, arg: str = "x") -> None:
    """Raise ValueError unless ``x`` has shape (..., expected)."""
    shape = tuple(np.shape(x))
    if len(shape) < 1 or shape[-1] != expected:
        raise ValueError(f"{module}: expected {arg} of shape (..., {expected}), got shape {shape}")


def check_channels_last(
    module: str, x, channels: int, spatial_dims: int = 2, arg: str = "x"
) -> None:
    """Raise ValueError unless ``x`` is a channels-last batch: (N, *spatial, channels)."""
    shape = tuple(np.shape(x))
    layout = _CHANNELS_LAST[spatial_dims]
    if len(shape) == spatial_dims + 2 and shape[-1] == channels:
        return
    hint = ""
    if len(shape) == spatial_dims + 2 and shape[1] == channels:
        perm = (0, *range(2, spatial_dims + 2), 1)
        hint = (
            f"; this looks like PyTorch's {_CHANNELS_FIRST[spatial_dims]} layout, "
            f"convert it with x.transpose{perm}"
        )
    expected = ("N", *(f"d{i}" for i in range(spatial_dims)), str(channels))
    raise ValueError(
        f"{module}: expected {arg} in {layout} layout with shape ({', '.join(expected)}), "
        f"got shape {shape}{hint}"
    )


def check_broadcastable(module: str, shapes: Sequence[tuple[int, ...]], args: Sequence[str]):
    """Raise ValueError unless the shapes broadcast together (as PyTorch's ``+`` requires)."""
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        named = ", ".join(f"{a} {tuple(s)}" for a, s in zip(args, shapes, strict=True))
        raise ValueError(f"{module}: shapes do not broadcast together: {named}") from None
