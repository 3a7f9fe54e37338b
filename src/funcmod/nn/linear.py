"""torch.nn's Linear, Bilinear, Identity, Flatten, Unflatten, Embedding and Dropout as Flax
Linen modules, with the functions they apply.

Parameters (Flax's names and layouts, what ``funcmod.convert`` produces from the torch layer):

* ``Linear``: ``kernel`` (in, out) = torch's weight transposed, ``bias`` (out,);
* ``Bilinear``: ``kernel`` (in1, in2, out) = torch's weight (out, in1, in2) permuted (1, 2, 0),
  ``bias`` (out,), both U(+-1/sqrt(in1)) as torch;
* ``Embedding``: ``embedding`` (num, dim), N(0, 1), the ``padding_idx`` row zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from funcmod.nn.init import torch_bias_init, torch_kernel_init

__all__ = [
    "Bilinear",
    "Dropout",
    "Embedding",
    "Flatten",
    "Identity",
    "Linear",
    "Unflatten",
    "bilinear",
    "dropout",
    "embedding",
    "linear",
]


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``x`` (..., in) @ ``kernel`` (in, out) + ``bias`` (out,) -> (..., out). Note the Flax
    layout: torch's ``F.linear(x, weight, bias)`` is ``linear(x, weight.T, bias)``."""
    if x.shape[-1:] != kernel.shape[:1]:
        raise ValueError(
            f"linear with kernel {kernel.shape} expects (..., {kernel.shape[0]}), got {x.shape}"
        )
    y = x @ kernel
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def bilinear(
    x1: jax.Array, x2: jax.Array, kernel: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """``y[..., o] = sum_ij x1[..., i] kernel[i, j, o] x2[..., j] + bias[o]``; ``x1`` (..., in1),
    ``x2`` (..., in2), ``kernel`` (in1, in2, out) -> (..., out)."""
    if x1.shape[-1] != kernel.shape[0] or x2.shape[-1] != kernel.shape[1]:
        raise ValueError(
            f"bilinear with kernel {kernel.shape} expects (..., {kernel.shape[0]}) and "
            f"(..., {kernel.shape[1]}), got {x1.shape} and {x2.shape}"
        )
    y = jnp.einsum("...i,ijo,...j->...o", x1, kernel, x2)
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def embedding(indices: jax.Array, table: jax.Array, padding_idx: int | None = None) -> jax.Array:
    """Rows of ``table`` (num, dim) at integer ``indices`` (...) -> (..., dim). The rows looked
    up at ``padding_idx`` get no gradient, as in torch.

    An id outside ``[0, num)`` is an error where torch raises one: ``IndexError`` when the ids
    are concrete values. Under ``jit`` they cannot be checked, so such an id gives a row of NaN
    (a negative id too, which ``jnp.take`` would otherwise wrap to the end of the table): never
    a silently wrong row.
    """
    indices = jnp.asarray(indices) if not isinstance(indices, jax.Array) else indices
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"embedding indices must be integers, got {indices.dtype}")
    num = table.shape[0]
    if not isinstance(indices, jax.core.Tracer) and indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= num:
            bad = low if low < 0 else high
            raise IndexError(f"embedding id {bad} is out of range for a table of {num} rows")
    safe = jnp.where(indices < 0, num, indices)  # out of range: filled with NaN below
    out = jnp.take(table, safe, axis=0, mode="fill", fill_value=jnp.nan)
    if padding_idx is not None:
        idx = padding_idx % table.shape[0]
        out = jnp.where((indices == idx)[..., None], jax.lax.stop_gradient(out), out)
    return out


def dropout(
    x: jax.Array, p: float = 0.5, training: bool = True, *, key: jax.Array | None = None
) -> jax.Array:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) when
    ``training``; the identity otherwise. ``key`` is required when training with p > 0. The mask
    is JAX's, never torch's: compare the two with ``training=False`` or with p = 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return jnp.zeros_like(x)
    if key is None:
        raise ValueError("dropout with training=True and p > 0 needs a key")
    keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros_like(x))


class Identity(nn.Module):
    """``torch.nn.Identity``: returns its input unchanged."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class Flatten(nn.Module):
    """Merge axes ``start_dim`` .. ``end_dim`` (inclusive), as ``torch.nn.Flatten``."""

    start_dim: int = 1
    end_dim: int = -1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        if start > end:
            raise ValueError(
                f"Flatten: start_dim {self.start_dim} is after end_dim {self.end_dim}"
                f" for an input of shape {x.shape}"
            )
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1 :])


class Unflatten(nn.Module):
    """Split axis ``dim`` into ``unflattened_size``, as ``torch.nn.Unflatten``."""

    dim: int
    unflattened_size: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.dim % x.ndim
        sizes = tuple(self.unflattened_size)
        known = math.prod(s for s in sizes if s != -1)
        if (-1 not in sizes and known != x.shape[d]) or (known and x.shape[d] % known):
            raise ValueError(f"Unflatten: axis {self.dim} of {x.shape} cannot become {sizes}")
        return x.reshape(*x.shape[:d], *sizes, *x.shape[d + 1 :])


class Linear(nn.Module):
    """``torch.nn.Linear``: (..., in_features) -> (..., out_features)."""

    in_features: int
    out_features: int
    bias: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", torch_kernel_init(), (self.in_features, self.out_features), self.param_dtype
        )
        b = (
            self.param(
                "bias", torch_bias_init(self.in_features), (self.out_features,), self.param_dtype
            )
            if self.bias
            else None
        )
        return linear(x, kernel, b)


class Bilinear(nn.Module):
    """``torch.nn.Bilinear``: (..., in1), (..., in2) -> (..., out)."""

    in1_features: int
    in2_features: int
    out_features: int
    bias: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
        init = torch_bias_init(self.in1_features)  # torch: U(+-1/sqrt(in1)) for both
        shape = (self.in1_features, self.in2_features, self.out_features)
        kernel = self.param("kernel", init, shape, self.param_dtype)
        b = self.param("bias", init, (self.out_features,), self.param_dtype) if self.bias else None
        return bilinear(x1, x2, kernel, b)


class Embedding(nn.Module):
    """``torch.nn.Embedding``: integer (...) -> (..., embedding_dim); ``params/embedding``
    (num_embeddings, embedding_dim)."""

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, indices: jax.Array) -> jax.Array:
        if self.padding_idx is not None and not (
            -self.num_embeddings <= self.padding_idx < self.num_embeddings
        ):
            raise ValueError(
                f"padding_idx must be within [-{self.num_embeddings}, {self.num_embeddings}), "
                f"got {self.padding_idx}"
            )

        def init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
            table = jax.random.normal(key, shape, dtype)
            if self.padding_idx is not None:
                table = table.at[self.padding_idx].set(0)
            return table

        shape = (self.num_embeddings, self.embedding_dim)
        table = self.param("embedding", init, shape, self.param_dtype)
        return embedding(indices, table, self.padding_idx)


class Dropout(nn.Module):
    """``torch.nn.Dropout(p)``; active only when called with ``train=True``, drawing its mask from
    the ``'dropout'`` rng stream (``apply(..., rngs={'dropout': key})``)."""

    p: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or self.p == 0.0:
            return dropout(x, self.p, training=False)
        return dropout(x, self.p, training=True, key=self.make_rng("dropout"))
