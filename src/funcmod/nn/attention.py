"""``torch.nn.functional.scaled_dot_product_attention`` and ``torch.nn.MultiheadAttention`` in
JAX / Flax Linen, with torch's argument names, layouts, mask conventions and numbers.

Masks. ``scaled_dot_product_attention`` takes torch's SDPA convention: a boolean ``attn_mask``
is True where a query may attend, a float mask is added to the scores. ``MultiheadAttention``
takes torch's MHA convention, the opposite for booleans: True in ``attn_mask`` or
``key_padding_mask`` means "do not attend".

``MultiheadAttention`` parameter layout: four Dense-like children with kernels (in, out)::

    torch in_proj_weight (3E, E)  rows [q; k; v]  -> q_proj/kernel, k_proj/kernel,
                                                     v_proj/kernel, each (E, E)
    torch q/k/v_proj_weight (E, E|kdim|vdim)      -> q/k/v_proj/kernel (E|kdim|vdim, E)
    torch in_proj_bias (3E,)                      -> q_proj/bias, k_proj/bias, v_proj/bias (E,)
    torch out_proj.weight (E, E), out_proj.bias   -> out_proj/kernel (E, E), out_proj/bias

Splitting and concatenating rows is exact, so the conversion is lossless both ways (the rule is
in ``funcmod.convert_groups``). Flax's own ``MultiHeadDotProductAttention`` keeps the heads as
an axis: ``query/kernel`` (E, heads, head_dim), ``query/bias`` (heads, head_dim), ``out/kernel``
(heads, head_dim, E); ``to_flax_mha`` reshapes this layout into it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["MultiheadAttention", "scaled_dot_product_attention", "to_flax_mha"]

Dtype = Any


def _float_bias(mask: jax.Array, dtype, attend_when_true: bool) -> jax.Array:
    """A boolean or float mask as an additive bias in ``dtype`` (-inf where masked)."""
    if mask.dtype == jnp.bool_:
        allowed = mask if attend_when_true else ~mask
        return jnp.where(allowed, jnp.zeros((), dtype), jnp.full((), -jnp.inf, dtype))
    return mask.astype(dtype)


def scaled_dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    attn_mask: jax.Array | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """``softmax(q k^T * scale + mask) v``, torch's SDPA.

    Args:
      query: (..., Hq, L, E); key: (..., Hk, S, E); value: (..., Hk, S, Ev).
      attn_mask: broadcastable to (..., Hq, L, S); bool (True = attend) or float (added).
      dropout_p: dropout on the attention weights; needs ``dropout_rng`` when > 0.
      is_causal: attend to keys ``j <= i`` only (top-left aligned, as torch); excludes
        ``attn_mask``.
      scale: defaults to 1/sqrt(E).
      enable_gqa: key/value heads are repeated ``Hq // Hk`` times (``repeat_interleave``).

    Returns:
      (..., Hq, L, Ev).
    """
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal")
    if dropout_p > 0.0 and dropout_rng is None:
        raise ValueError("scaled_dot_product_attention: dropout_p > 0 needs dropout_rng")
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        h_q, h_k = query.shape[-3], key.shape[-3]
        if h_q % h_k:
            raise ValueError(f"enable_gqa: {h_q} query heads are not a multiple of {h_k}")
        key = jnp.repeat(key, h_q // h_k, axis=-3)  # (..., Hk, S, E) -> (..., Hq, S, E)
        value = jnp.repeat(value, h_q // h_k, axis=-3)
    dtype = query.dtype
    length, src = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ jnp.swapaxes(key, -1, -2)) * jnp.asarray(scale, dtype)  # (..., L, S)
    if is_causal:
        attn_mask = jnp.tril(jnp.ones((length, src), jnp.bool_))
    if attn_mask is not None:
        bias = _float_bias(attn_mask, dtype, attend_when_true=True)
        scores = scores + jnp.broadcast_to(bias, scores.shape)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout_p > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_p, weights.shape)
        weights = jnp.where(keep, weights / jnp.asarray(1.0 - dropout_p, dtype), 0)
    return weights @ value


def _uniform(bound: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention``; ``add_bias_kv=True`` and ``add_zero_attn=True`` are
    refused.

    ``__call__(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False, *, train=False) -> (attn_output, weights)``:
    query (L, N, E) ((N, L, E) with ``batch_first``, or unbatched (L, E)), key (S, N, kdim),
    value (S, N, vdim); ``attn_output`` like query; ``weights`` (N, L, S) averaged over heads,
    (N, heads, L, S) otherwise, or None when ``need_weights`` is False. As in torch,
    ``is_causal`` is only a hint and needs the causal ``attn_mask`` itself.

    Initialisation as torch: q/k/v kernels xavier-uniform (the packed (3E, E) matrix's bound
    sqrt(6 / 4E) when kdim == vdim == E), out_proj kernel U(+-1/sqrt(E)), every bias zero.
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False
    param_dtype: Dtype = jnp.float32

    def _dense(self, name: str, fan_in: int, bound: float):
        return nn.Dense(
            self.embed_dim,
            use_bias=self.bias,
            kernel_init=_uniform(bound),
            bias_init=nn.initializers.zeros,
            param_dtype=self.param_dtype,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        key_padding_mask: jax.Array | None = None,
        need_weights: bool = True,
        attn_mask: jax.Array | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        train: bool = False,
    ):
        e, heads = self.embed_dim, self.num_heads
        if self.add_bias_kv or self.add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv / add_zero_attn unsupported")
        if e % heads:
            raise ValueError(f"embed_dim {e} is not divisible by num_heads {heads}")
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal needs attn_mask (as in torch)")
        kdim, vdim = self.kdim or e, self.vdim or e
        if query.shape[-1] != e or key.shape[-1] != kdim or value.shape[-1] != vdim:
            raise ValueError(
                f"MultiheadAttention: feature sizes query {query.shape}, key {key.shape}, "
                f"value {value.shape}; expected last axes {e}, {kdim}, {vdim}"
            )
        unbatched = query.ndim == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (jnp.swapaxes(a, 0, 1) for a in (query, key, value))
        packed = kdim == e and vdim == e
        b_in = math.sqrt(6.0 / (4 * e))
        q = self._dense("q_proj", e, b_in if packed else math.sqrt(6.0 / (2 * e)))(query)
        k = self._dense("k_proj", kdim, b_in if packed else math.sqrt(6.0 / (e + kdim)))(key)
        v = self._dense("v_proj", vdim, b_in if packed else math.sqrt(6.0 / (e + vdim)))(value)
        n, length, src = q.shape[0], q.shape[1], k.shape[1]
        hd = e // heads

        def split(a, t):  # (N, T, E) -> (N, heads, T, hd)
            return jnp.swapaxes(a.reshape(n, t, heads, hd), 1, 2)

        q, k, v = split(q, length), split(k, src), split(v, src)
        dtype = q.dtype
        bias = jnp.zeros((n, heads, length, src), dtype)
        if attn_mask is not None:
            m = _float_bias(attn_mask, dtype, attend_when_true=False)
            if m.ndim == 3:  # (N*heads, L, S) -> (N, heads, L, S)
                m = m.reshape(n, heads, length, src)
            bias = bias + jnp.broadcast_to(m, bias.shape)
        if key_padding_mask is not None:
            m = _float_bias(key_padding_mask, dtype, attend_when_true=False)  # (N, S)
            bias = bias + jnp.broadcast_to(m[:, None, None, :], bias.shape)
        scores = (q * jnp.asarray(1.0 / math.sqrt(hd), dtype)) @ jnp.swapaxes(k, -1, -2)
        weights = jax.nn.softmax(scores + bias, axis=-1)  # (N, heads, L, S)
        if train and self.dropout > 0.0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout, weights.shape)
            weights = jnp.where(keep, weights / jnp.asarray(1.0 - self.dropout, dtype), 0)
        out = jnp.swapaxes(weights @ v, 1, 2).reshape(n, length, e)  # (N, L, E)
        out = nn.Dense(
            e,
            use_bias=self.bias,
            kernel_init=_uniform(1.0 / math.sqrt(e)),
            bias_init=nn.initializers.zeros,
            param_dtype=self.param_dtype,
            name="out_proj",
        )(out)
        if unbatched:
            out, weights = out[0], weights[0]
        elif not self.batch_first:
            out = jnp.swapaxes(out, 0, 1)  # (N, L, E) -> (L, N, E)
        if not need_weights:
            return out, None
        return out, (weights.mean(axis=-3) if average_attn_weights else weights)


def to_flax_mha(params: dict, num_heads: int) -> dict:
    """``MultiheadAttention`` params as ``flax.linen.MultiHeadDotProductAttention`` params.

    Returns ``{'query': {'kernel' (E, heads, hd), 'bias' (heads, hd)}, 'key', 'value',
    'out': {'kernel' (heads, hd, E), 'bias' (E,)}}``; only reshapes, so it is exact.
    """
    out: dict = {}
    for ours, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
        kernel = jnp.asarray(params[ours]["kernel"])
        hd = kernel.shape[1] // num_heads
        out[theirs] = {"kernel": kernel.reshape(kernel.shape[0], num_heads, hd)}  # (in, H, hd)
        if "bias" in params[ours]:
            out[theirs]["bias"] = jnp.asarray(params[ours]["bias"]).reshape(num_heads, hd)
    kernel = jnp.asarray(params["out_proj"]["kernel"])
    out["out"] = {"kernel": kernel.reshape(num_heads, -1, kernel.shape[1])}  # (H, hd, E)
    if "bias" in params["out_proj"]:
        out["out"]["bias"] = jnp.asarray(params["out_proj"]["bias"])
    return out
