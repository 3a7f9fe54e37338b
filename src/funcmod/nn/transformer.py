"""``torch.nn.TransformerEncoderLayer``, ``TransformerEncoder`` and ``TransformerDecoderLayer``
as Flax Linen modules with torch's constructor arguments, child names and numbers.

Children carry torch's attribute names (``self_attn``, ``multihead_attn``, ``linear1``,
``linear2``, ``norm1``..``norm3``), so their parameters convert by the children's own rules:
``MultiheadAttention`` (``funcmod.nn.attention``), Linear -> Dense ``kernel`` (in, out),
LayerNorm -> ``scale``/``bias``. ``TransformerEncoder``'s copies are ``layers_0``, ``layers_1``,
..., what torch's ``layers`` ModuleList converts to. Dropout (``train=True``) draws from the
``'dropout'`` rng; with ``train=False`` the numbers are those of torch's eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from funcmod.nn.attention import MultiheadAttention
from funcmod.nn.init import torch_bias_init, torch_kernel_init

__all__ = ["TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer"]

Dtype = Any

_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


def _activation(act: str | Callable) -> Callable:
    if callable(act):
        return act
    if act not in _ACTIVATIONS:
        raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {act!r}")
    return _ACTIVATIONS[act]


class _Block(nn.Module):
    """What the encoder and decoder layers share: torch's constructor arguments and their
    Linear/LayerNorm/dropout helpers."""

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str | Callable = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True
    param_dtype: Dtype = jnp.float32

    def _linear(self, fan_in: int, features: int, name: str) -> nn.Dense:
        return nn.Dense(
            features,
            use_bias=self.bias,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(fan_in),
            param_dtype=self.param_dtype,
            name=name,
        )

    def _norm(self, name: str) -> nn.LayerNorm:
        # exact two-pass variance and no float32 reduction: torch's LayerNorm in either dtype
        return nn.LayerNorm(
            epsilon=self.layer_norm_eps,
            use_bias=self.bias,
            use_fast_variance=False,
            force_float32_reductions=False,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _attn(self, name: str) -> MultiheadAttention:
        return MultiheadAttention(
            self.d_model,
            self.nhead,
            dropout=self.dropout,
            bias=self.bias,
            batch_first=True,  # the block moves the batch to the front itself
            param_dtype=self.param_dtype,
            name=name,
        )

    def _drop(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.Dropout(self.dropout, deterministic=not train)(x)

    def _ff(self, x: jax.Array, train: bool) -> jax.Array:
        h = _activation(self.activation)(
            self._linear(self.d_model, self.dim_feedforward, "linear1")(x)
        )
        return self._linear(self.dim_feedforward, self.d_model, "linear2")(self._drop(h, train))

    def _to_batch_first(self, x: jax.Array | None) -> jax.Array | None:
        if x is None or self.batch_first or x.ndim == 2:
            return x
        return jnp.swapaxes(x, 0, 1)  # (L, N, E) <-> (N, L, E)


class TransformerEncoderLayer(_Block):
    """``torch.nn.TransformerEncoderLayer``.

    ``__call__(src, src_mask=None, src_key_padding_mask=None, is_causal=False, *, train=False)``:
    src (S, N, E) ((N, S, E) with ``batch_first``, or (S, E)) -> the same shape. Masks follow
    ``MultiheadAttention`` (bool True = do not attend).
    """

    @nn.compact
    def __call__(
        self, src, src_mask=None, src_key_padding_mask=None, is_causal=False, *, train=False
    ):
        x = self._to_batch_first(src)
        attn = self._attn("self_attn")

        def sa(h):
            out = attn(h, h, h, src_key_padding_mask, False, src_mask, True, is_causal, train=train)
            return self._drop(out[0], train)

        norm1, norm2 = self._norm("norm1"), self._norm("norm2")
        if self.norm_first:
            x = x + sa(norm1(x))
            x = x + self._drop(self._ff(norm2(x), train), train)
        else:
            x = norm1(x + sa(x))
            x = norm2(x + self._drop(self._ff(x, train), train))
        return self._to_batch_first(x)


class TransformerDecoderLayer(_Block):
    """``torch.nn.TransformerDecoderLayer``.

    ``__call__(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False, *, train=False)``:
    tgt (T, N, E), memory (S, N, E) (batch first with ``batch_first``) -> tgt's shape.
    """

    @nn.compact
    def __call__(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal=False,
        memory_is_causal=False,
        *,
        train=False,
    ):
        x, mem = self._to_batch_first(tgt), self._to_batch_first(memory)
        self_attn, cross_attn = self._attn("self_attn"), self._attn("multihead_attn")

        def sa(h):
            out = self_attn(
                h, h, h, tgt_key_padding_mask, False, tgt_mask, True, tgt_is_causal, train=train
            )
            return self._drop(out[0], train)

        def mha(h):
            out = cross_attn(
                h,
                mem,
                mem,
                memory_key_padding_mask,
                False,
                memory_mask,
                True,
                memory_is_causal,
                train=train,
            )
            return self._drop(out[0], train)

        norm1, norm2, norm3 = self._norm("norm1"), self._norm("norm2"), self._norm("norm3")
        if self.norm_first:
            x = x + sa(norm1(x))
            x = x + mha(norm2(x))
            x = x + self._drop(self._ff(norm3(x), train), train)
        else:
            x = norm1(x + sa(x))
            x = norm2(x + mha(x))
            x = norm3(x + self._drop(self._ff(x, train), train))
        return self._to_batch_first(x)


class TransformerEncoder(nn.Module):
    """``torch.nn.TransformerEncoder``: ``num_layers`` independent copies of ``encoder_layer``
    (``layers_0``, ...), then ``norm`` if given (a LayerNorm module, e.g. ``flax.linen.LayerNorm
    (epsilon=1e-5, use_fast_variance=False)``).

    ``__call__(src, mask=None, src_key_padding_mask=None, is_causal=False, *, train=False)``.
    torch's ``enable_nested_tensor`` fast path returns zeros at padded positions in eval mode;
    this module computes every position (build the torch twin with
    ``enable_nested_tensor=False`` to compare them).
    """

    encoder_layer: TransformerEncoderLayer
    num_layers: int
    norm: nn.Module | None = None

    def setup(self):
        self.layers = [self.encoder_layer.clone(parent=None) for _ in range(self.num_layers)]

    def __call__(self, src, mask=None, src_key_padding_mask=None, is_causal=False, *, train=False):
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask, is_causal, train=train)
        return x if self.norm is None else self.norm(x)
