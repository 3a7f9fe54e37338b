"""torch.nn's activation layers as Flax Linen modules, and the functions they apply.

Every function takes an array of any shape and returns one of the same shape and dtype;
``softmax`` and ``log_softmax`` normalise along ``dim`` as torch does. The modules have
torch's class names and constructor arguments; only ``PReLU`` has a parameter
(``negative_slope``, shape ``(num_parameters,)``, Flax's name for it, initialised to ``init``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

__all__ = [
    "ELU",
    "GELU",
    "Hardsigmoid",
    "Hardswish",
    "LeakyReLU",
    "LogSoftmax",
    "Mish",
    "PReLU",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "elu",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "leaky_relu",
    "log_softmax",
    "mish",
    "prelu",
    "relu",
    "relu6",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]


def relu(x: jax.Array) -> jax.Array:
    """``F.relu``: ``max(x, 0)``, elementwise; the gradient at 0 is 0, as torch's."""
    return jax.nn.relu(x)


def relu6(x: jax.Array) -> jax.Array:
    """``F.relu6``: ``min(max(x, 0), 6)``, elementwise."""
    # torch's hardtanh(0, 6): gradient 0 at both kinks, as jnp.clip's
    return jnp.clip(x, 0.0, 6.0)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """``F.leaky_relu``: ``x`` where ``x > 0``, else ``negative_slope * x``."""
    return jnp.where(x > 0, x, x * negative_slope)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """``F.elu``: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    # expm1 on the clamped input: no overflow in the discarded branch, so no NaN gradient
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0)))


def gelu(x: jax.Array, approximate: str = "none") -> jax.Array:
    """torch's GELU: the exact erf form for ``approximate='none'``, the tanh one for 'tanh'
    (Flax's ``nn.gelu`` defaults to tanh)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def silu(x: jax.Array) -> jax.Array:
    """``F.silu`` (swish): ``x * sigmoid(x)``."""
    return x * jax.nn.sigmoid(x)


def mish(x: jax.Array) -> jax.Array:
    """``F.mish``: ``x * tanh(softplus(x))``."""
    return x * jnp.tanh(jax.nn.softplus(x))


# torch's hardsigmoid backward multiplies by the float32 constant 1.0f / 6.0f in every dtype, so
# its float64 gradient is 1/6 rounded to float32 (relative error 3e-8, docs/pitfalls.md); the
# derivative here is that same constant, zero outside (-3, 3) as in torch.
_ONE_SIXTH_F32 = float(np.float32(1.0) / np.float32(6.0))


@jax.custom_jvp
def hardsigmoid(x: jax.Array) -> jax.Array:
    """``F.hardsigmoid``: ``clip(x + 3, 0, 6) / 6``; its derivative is torch's float32 1/6
    inside (-3, 3) in every dtype, 0 outside."""
    return jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


@hardsigmoid.defjvp
def _hardsigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    slope = jnp.where((x > -3.0) & (x < 3.0), _ONE_SIXTH_F32, 0.0).astype(x.dtype)
    return hardsigmoid(x), slope * t


def hardswish(x: jax.Array) -> jax.Array:
    """``F.hardswish``: ``x * clip(x + 3, 0, 6) / 6``."""
    return x * (jnp.clip(x + 3.0, 0.0, 6.0) / 6.0)


def sigmoid(x: jax.Array) -> jax.Array:
    """``torch.sigmoid``: ``1 / (1 + exp(-x))``."""
    return jax.nn.sigmoid(x)


def tanh(x: jax.Array) -> jax.Array:
    """``torch.tanh``."""
    return jnp.tanh(x)


def _softmax_dim(ndim: int, dim: int | None) -> int:
    # torch's rule for the deprecated implicit dim: 0 for 0-, 1- and 3-d inputs, else 1
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ValueError(f"dim {dim} is out of range for an input of rank {ndim}")
    return dim


def softmax(x: jax.Array, dim: int | None = None) -> jax.Array:
    """``F.softmax`` over axis ``dim``; ``dim=None`` picks the axis as torch's deprecated
    implicit rule does (0 for 0-, 1- and 3-d inputs, else 1). Raises ValueError for a ``dim``
    out of range."""
    return jax.nn.softmax(x, axis=_softmax_dim(x.ndim, dim))


def log_softmax(x: jax.Array, dim: int | None = None) -> jax.Array:
    """``F.log_softmax`` over axis ``dim``, chosen as for ``softmax``."""
    return jax.nn.log_softmax(x, axis=_softmax_dim(x.ndim, dim))


def prelu(x: jax.Array, weight: jax.Array) -> jax.Array:
    """``weight`` (1,) or (C,): one slope, or one per channel (axis 1 of ``x``, channels
    first)."""
    if weight.size == 1:
        w = weight.reshape((1,) * x.ndim)
    else:
        if x.ndim < 2 or x.shape[1] != weight.size:
            raise ValueError(
                f"PReLU with {weight.size} parameters expects input (N, {weight.size}, ...), "
                f"got {x.shape}"
            )
        w = weight.reshape((1, -1) + (1,) * (x.ndim - 2))
    return jnp.where(x > 0, x, w * x)


class ReLU(nn.Module):
    """``torch.nn.ReLU``: ``relu``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return relu(x)


class ReLU6(nn.Module):
    """``torch.nn.ReLU6``: ``relu6``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return relu6(x)


class LeakyReLU(nn.Module):
    """``torch.nn.LeakyReLU(negative_slope=0.01)``: ``leaky_relu``, elementwise."""

    negative_slope: float = 0.01

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return leaky_relu(x, self.negative_slope)


class ELU(nn.Module):
    """``torch.nn.ELU(alpha=1.0)``: ``elu``, elementwise."""

    alpha: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return elu(x, self.alpha)


class GELU(nn.Module):
    """``torch.nn.GELU(approximate='none')``: ``gelu``, the exact erf form unless
    ``approximate='tanh'``."""

    approximate: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(x, self.approximate)


class SiLU(nn.Module):
    """``torch.nn.SiLU``: ``silu``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return silu(x)


class Mish(nn.Module):
    """``torch.nn.Mish``: ``mish``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return mish(x)


class Hardswish(nn.Module):
    """``torch.nn.Hardswish``: ``hardswish``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return hardswish(x)


class Hardsigmoid(nn.Module):
    """``torch.nn.Hardsigmoid``: ``hardsigmoid``, elementwise, with torch's gradient."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return hardsigmoid(x)


class Sigmoid(nn.Module):
    """``torch.nn.Sigmoid``: ``sigmoid``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return sigmoid(x)


class Tanh(nn.Module):
    """``torch.nn.Tanh``: ``tanh``, elementwise."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return tanh(x)


class Softmax(nn.Module):
    """``torch.nn.Softmax(dim=None)``: ``softmax`` along ``dim`` (``None``: torch's implicit
    choice)."""

    dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return softmax(x, self.dim)


class LogSoftmax(nn.Module):
    """``torch.nn.LogSoftmax(dim=None)``: ``log_softmax`` along ``dim``."""

    dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return log_softmax(x, self.dim)


class PReLU(nn.Module):
    """``torch.nn.PReLU(num_parameters=1, init=0.25)``: ``params/negative_slope``
    (num_parameters,), torch's ``weight``. torch's ``init`` is spelt ``init_value`` here (a Linen
    module's ``init`` is its initialising method); positionally, ``PReLU(3, 0.1)`` is torch's."""

    num_parameters: int = 1
    init_value: float = 0.25
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "negative_slope",
            nn.initializers.constant(self.init_value),
            (self.num_parameters,),
            self.param_dtype,
        )
        return prelu(x, slope)
