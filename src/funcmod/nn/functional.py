"""``torch.nn.functional``'s forms, torch-free: what a ``forward`` calls, channels first.

Convolution and linear functions take Flax-layout kernels (``linear``: (in, out); ``conv1d/2d/3d``:
(*k, C_in/groups, C_out); ``conv_transpose*``: (*k, C_out/groups, C_in)), the layouts
``funcmod.convert`` gives and the ``funcmod.nn`` layers store. Losses reduce as torch's do
(``reduction`` 'mean', 'sum' or 'none').
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from funcmod.nn.activation import (
    elu,
    gelu,
    hardsigmoid,
    hardswish,
    leaky_relu,
    log_softmax,
    mish,
    prelu,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from funcmod.nn.attention import scaled_dot_product_attention
from funcmod.nn.convolution import conv, conv_transpose, pad
from funcmod.nn.linear import bilinear, dropout, embedding, linear
from funcmod.nn.normalization import group_norm, layer_norm, rms_norm
from funcmod.nn.pooling import (
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    interpolate,
    max_pool,
    pixel_shuffle,
)

__all__ = [
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "bilinear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "cross_entropy",
    "dropout",
    "elu",
    "embedding",
    "gelu",
    "group_norm",
    "hardsigmoid",
    "hardswish",
    "interpolate",
    "layer_norm",
    "leaky_relu",
    "linear",
    "log_softmax",
    "max_pool1d",
    "max_pool2d",
    "mish",
    "mse_loss",
    "pad",
    "pixel_shuffle",
    "prelu",
    "relu",
    "relu6",
    "rms_norm",
    "scaled_dot_product_attention",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]

conv1d = conv2d = conv3d = conv  # the kernel's rank decides the spatial rank
conv_transpose1d = conv_transpose2d = conv_transpose3d = conv_transpose
max_pool1d = functools.partial(max_pool, ndim=1)
max_pool2d = functools.partial(max_pool, ndim=2)
avg_pool1d = functools.partial(avg_pool, ndim=1)
avg_pool2d = functools.partial(avg_pool, ndim=2)
adaptive_avg_pool1d = functools.partial(adaptive_avg_pool, ndim=1)
adaptive_avg_pool2d = functools.partial(adaptive_avg_pool, ndim=2)
adaptive_max_pool2d = functools.partial(adaptive_max_pool, ndim=2)


def _reduce(loss: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mse_loss(input: jax.Array, target: jax.Array, reduction: str = "mean") -> jax.Array:
    """Squared error between two arrays of the same shape, reduced."""
    if input.shape != target.shape:
        raise ValueError(f"mse_loss needs equal shapes, got {input.shape} and {target.shape}")
    return _reduce(jnp.square(input - target), reduction)


def cross_entropy(
    input: jax.Array,
    target: jax.Array,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> jax.Array:
    """torch's ``cross_entropy`` with class-index targets.

    Args:
      input: logits (N, C) or (N, C, *S) (classes on axis 1), or (C,) for one sample.
      target: integer classes (N,) or (N, *S), or () for one sample.
      ignore_index: targets equal to it contribute nothing, and 'mean' divides by the number of
        the others (NaN when every target is ignored, as in torch).
      label_smoothing: eps: the loss is (1 - eps) * NLL + eps * mean over classes of -log p.

    Returns:
      a scalar for 'mean' and 'sum', else the per-sample losses with ``target``'s shape.
    """
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(f"cross_entropy expects integer class targets, got {target.dtype}")
    if input.ndim == 1:
        input, target = input[None], target[None]
    if input.shape[:1] + input.shape[2:] != target.shape:
        raise ValueError(
            f"cross_entropy: input {input.shape} (N, C, ...) needs target "
            f"{input.shape[:1] + input.shape[2:]}, got {target.shape}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = jnp.moveaxis(jax.nn.log_softmax(input, axis=1), 1, -1)  # (N, *S, C)
    keep = target != ignore_index
    safe = jnp.where(keep, target, 0)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    loss = nll
    if label_smoothing > 0.0:
        smooth = -jnp.mean(logp, axis=-1)
        loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    loss = jnp.where(keep, loss, jnp.zeros_like(loss))
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(keep).astype(loss.dtype)
    return _reduce(loss, reduction)
