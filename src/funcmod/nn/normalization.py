"""torch.nn's normalization layers as Flax Linen modules, channels first, and the functions they
apply.

Parameters and statistics (Flax's names, what ``funcmod.convert`` produces from the torch layer):
``params/scale`` (torch's ``weight``) and ``params/bias``; ``batch_stats/mean`` and
``batch_stats/var`` (torch's ``running_mean`` / ``running_var``, the variance stored unbiased as
torch stores it). ``BatchNorm`` with ``momentum=None`` also keeps ``batch_stats/
num_batches_tracked``, the step count its cumulative average divides by.

``train=False`` behaves like torch's ``.eval()``; ``train=True`` normalises with the batch's
statistics and, where the layer tracks running statistics, updates them as torch does (apply
with ``mutable=['batch_stats']``); ``init`` leaves them at their initial values, as Flax's own
``BatchNorm`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm",
    "RMSNorm",
    "group_norm",
    "layer_norm",
    "rms_norm",
]


def _channel_shape(x: jax.Array) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)  # broadcasts a (C,) vector over (N, C, *S)


def _affine(y: jax.Array, weight: jax.Array | None, bias: jax.Array | None, shape) -> jax.Array:
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _last_dims(x: jax.Array, normalized_shape: Sequence[int], what: str) -> tuple[int, ...]:
    shape = tuple(normalized_shape)
    if x.shape[x.ndim - len(shape) :] != shape or len(shape) > x.ndim:
        raise ValueError(
            f"{what} over {shape} expects input (..., {', '.join(map(str, shape))}), got {x.shape}"
        )
    return tuple(range(x.ndim - len(shape), x.ndim))


def layer_norm(
    x: jax.Array,
    normalized_shape: Sequence[int],
    weight: jax.Array | None = None,
    bias: jax.Array | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """Normalise ``x`` (..., *normalized_shape) over its last ``len(normalized_shape)`` axes with
    the biased variance; ``weight``/``bias`` have shape ``normalized_shape``."""
    axes = _last_dims(x, normalized_shape, "layer_norm")
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    shape = (1,) * (x.ndim - len(axes)) + tuple(normalized_shape)
    return _affine((x - mean) * jax.lax.rsqrt(var + eps), weight, bias, shape)


def rms_norm(
    x: jax.Array,
    normalized_shape: Sequence[int],
    weight: jax.Array | None = None,
    eps: float | None = None,
) -> jax.Array:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axes; ``eps=None`` is the dtype's
    machine epsilon, as in torch."""
    axes = _last_dims(x, normalized_shape, "rms_norm")
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps)
    shape = (1,) * (x.ndim - len(axes)) + tuple(normalized_shape)
    return _affine(y, weight, None, shape)


def group_norm(
    x: jax.Array,
    num_groups: int,
    weight: jax.Array | None = None,
    bias: jax.Array | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """``x`` (N, C, *S): normalise each of ``num_groups`` groups of C/num_groups consecutive
    channels over those channels and all of S; ``weight``/``bias`` (C,)."""
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ValueError(
            f"group_norm with {num_groups} groups expects (N, C, ...) with C "
            f"divisible by {num_groups}, got {x.shape}"
        )
    g = x.reshape(x.shape[0], num_groups, -1)  # (N, C, *S) -> (N, G, C/G * prod(S))
    mean = jnp.mean(g, axis=2, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=2, keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return _affine(y, weight, bias, _channel_shape(x))


class LayerNorm(nn.Module):
    """``torch.nn.LayerNorm``: ``params/scale`` and ``params/bias`` of shape
    ``normalized_shape`` (an int is a 1-tuple)."""

    normalized_shape: int | Sequence[int]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = _as_shape(self.normalized_shape)
        w = b = None
        if self.elementwise_affine:
            w = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
            if self.bias:
                b = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        return layer_norm(x, shape, w, b, self.eps)


class RMSNorm(nn.Module):
    """``torch.nn.RMSNorm``: ``params/scale`` of shape ``normalized_shape``."""

    normalized_shape: int | Sequence[int]
    eps: float | None = None
    elementwise_affine: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = _as_shape(self.normalized_shape)
        w = None
        if self.elementwise_affine:
            w = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        return rms_norm(x, shape, w, self.eps)


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm``: (N, num_channels, *S); ``params/scale``, ``params/bias``
    (num_channels,)."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels ({self.num_channels}) must be divisible by "
                f"num_groups ({self.num_groups})"
            )
        _check_channels(x, self.num_channels, "GroupNorm", 2)
        w = b = None
        if self.affine:
            c = (self.num_channels,)
            w = self.param("scale", nn.initializers.ones, c, self.param_dtype)
            b = self.param("bias", nn.initializers.zeros, c, self.param_dtype)
        return group_norm(x, self.num_groups, w, b, self.eps)


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _check_channels(x: jax.Array, c: int, what: str, *ranks: int) -> None:
    if (ranks and x.ndim not in ranks and not (ranks == (2,) and x.ndim >= 2)) or x.shape[1] != c:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ValueError(f"{what}({c}) expects a {want} input (N, {c}, ...), got {x.shape}")


class _Norm(nn.Module):
    """Shared by BatchNorm and InstanceNorm: parameters, running statistics and their update."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    param_dtype: Any = jnp.float32

    ranks: ClassVar[tuple[int, ...]] = (4,)

    def _params(self) -> tuple[jax.Array | None, jax.Array | None]:
        if not self.affine:
            return None, None
        c = (self.num_features,)
        return (
            self.param("scale", nn.initializers.ones, c, self.param_dtype),
            self.param("bias", nn.initializers.zeros, c, self.param_dtype),
        )

    def _stats(self):
        c = (self.num_features,)
        mean = self.variable("batch_stats", "mean", jnp.zeros, c, self.param_dtype)
        var = self.variable("batch_stats", "var", jnp.ones, c, self.param_dtype)
        return mean, var

    def _update(self, stat, batch_value: jax.Array, factor: Any) -> None:
        # torch: running = (1 - factor) * running + factor * batch, outside autograd
        stat.value = (1 - factor) * stat.value + factor * jax.lax.stop_gradient(batch_value)


class _BatchNorm(_Norm):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x`` (N, C, *S) -> the same shape; statistics over N and S per channel."""
        _check_channels(x, self.num_features, type(self).__name__, *self.ranks)
        w, b = self._params()
        shape = _channel_shape(x)
        axes = (0, *range(2, x.ndim))
        if self.track_running_stats:
            running_mean, running_var = self._stats()
            # momentum=None: the cumulative average divides by the steps so far (torch's int64
            # num_batches_tracked; int32 without 64-bit JAX)
            count = (
                self.variable(
                    "batch_stats",
                    "num_batches_tracked",
                    jnp.zeros,
                    (),
                    jax.dtypes.canonicalize_dtype(jnp.int64),
                )
                if self.momentum is None
                else None
            )
        if train or not self.track_running_stats:
            n = x.size // x.shape[1]
            if train and n < 2:
                raise ValueError(
                    f"BatchNorm in training needs more than 1 value per channel, "
                    f"got input {x.shape}"
                )
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)  # biased
            if train and self.track_running_stats and not self.is_initializing():
                if count is None:
                    factor = self.momentum
                else:
                    count.value = count.value + 1
                    factor = 1.0 / count.value.astype(self.param_dtype)
                self._update(running_mean, mean, factor)
                self._update(running_var, var * (n / (n - 1)), factor)  # stored unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + self.eps)
        return _affine(y, w, b, shape)


class BatchNorm1d(_BatchNorm):
    """``torch.nn.BatchNorm1d``: input (N, C) or (N, C, L)."""

    ranks: ClassVar[tuple[int, ...]] = (2, 3)


class BatchNorm2d(_BatchNorm):
    """``torch.nn.BatchNorm2d``: input (N, C, H, W); n = N*H*W in the unbiased running var."""

    ranks: ClassVar[tuple[int, ...]] = (4,)


class BatchNorm3d(_BatchNorm):
    """``torch.nn.BatchNorm3d``: input (N, C, D, H, W)."""

    ranks: ClassVar[tuple[int, ...]] = (5,)


class InstanceNorm2d(_Norm):
    """``torch.nn.InstanceNorm2d`` (defaults ``affine=False``, ``track_running_stats=False``):
    input (N, C, H, W), statistics per sample and channel over H and W. In training, the running
    statistics move towards the batch average of the per-sample statistics (variance unbiased
    with n = H*W); ``momentum=None`` does not update them, as in torch."""

    affine: bool = False
    track_running_stats: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_channels(x, self.num_features, "InstanceNorm2d", 4)
        w, b = self._params()
        shape = _channel_shape(x)
        if self.track_running_stats:
            running_mean, running_var = self._stats()
        if train or not self.track_running_stats:
            mean = jnp.mean(x, axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
            var = jnp.mean(jnp.square(x - mean), axis=(2, 3), keepdims=True)
            if train and self.track_running_stats and not self.is_initializing():
                n = math.prod(x.shape[2:])
                factor = 0.0 if self.momentum is None else self.momentum
                self._update(running_mean, jnp.mean(mean, axis=(0, 2, 3)), factor)
                unbiased = jnp.mean(var, axis=(0, 2, 3)) * (n / (n - 1))
                self._update(running_var, unbiased, factor)
        else:
            mean, var = running_mean.value.reshape(shape), running_var.value.reshape(shape)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return _affine(y, w, b, shape)
