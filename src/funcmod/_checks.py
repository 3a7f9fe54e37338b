"""Input checks shared by the Flax ports: they run at trace time, so they cost nothing under jit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_CHANNELS_LAST = {1: "NLC", 2: "NHWC", 3: "NDHWC"}
_CHANNELS_FIRST = {1: "NCL", 2: "NCHW", 3: "NCDHW"}


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
