"""Flax initialisers that draw from PyTorch's default distributions.

PyTorch's ``nn.Linear`` and ``nn.ConvNd`` initialise their weight with
``kaiming_uniform_(a=sqrt(5))``, which is U(-1/sqrt(fan_in), +1/sqrt(fan_in)), and their bias
with U(-1/sqrt(fan_in), +1/sqrt(fan_in)). Flax's defaults are ``lecun_normal()`` and zeros, so a
port initialised with Flax's defaults starts from a different distribution and trains differently.

The kernel initialiser is Flax's own ``variance_scaling``: its bound is sqrt(3 * scale / fan_in),
which with scale = 1/3 is 1/sqrt(fan_in). The bias initialiser needs fan_in, which Flax's
``bias_init`` does not receive (it only sees the bias shape), so the caller passes it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["torch_bias_init", "torch_kernel_init"]


def torch_kernel_init() -> nn.initializers.Initializer:
    """Kernel initialiser matching PyTorch's default Linear/Conv weight distribution.

    Works for a Dense kernel ``(in, out)`` and a Conv kernel ``(*window, in, out)``: Flax's
    ``variance_scaling`` takes fan_in = prod(window) * in, as PyTorch does.
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """Bias initialiser matching PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
      fan_in: number of inputs feeding each output unit (``in_features`` for a Linear layer,
        ``in_channels * prod(kernel_size)`` for a convolution).
    """
    if fan_in < 0:
        raise ValueError(f"fan_in must be >= 0, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init
