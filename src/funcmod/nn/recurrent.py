"""``torch.nn.RNN``, ``LSTM`` and ``GRU`` as Flax Linen modules, computing torch's numbers.

Same class names, constructor arguments, input layout (``(L, N, in)``, ``(N, L, in)`` with
``batch_first=True``, or unbatched ``(L, in)``) and return values as torch::

    LSTM: (output, (h_n, c_n))      GRU / RNN: (output, h_n)
    output (L, N, D * H) (batch_first: (N, L, D * H));  h_n, c_n (D * num_layers, N, H)

where ``D`` is 2 when ``bidirectional`` and ``H`` is ``hidden_size``.

Parameter layout. Per layer ``k`` and direction (suffix ``''`` or ``'_reverse'``), four leaves
named after torch's tensors, with the weights transposed to Flax's (in, out) convention::

    torch weight_ih_l{k}{sfx} (G*H, in)  -> kernel_ih_l{k}{sfx} (in, G*H)
    torch weight_hh_l{k}{sfx} (G*H, H)   -> kernel_hh_l{k}{sfx} (H, G*H)
    torch bias_ih_l{k}{sfx}  (G*H,)      -> bias_ih_l{k}{sfx}  (G*H,)
    torch bias_hh_l{k}{sfx}  (G*H,)      -> bias_hh_l{k}{sfx}  (G*H,)

with ``G`` = 4 gates in torch's order i, f, g, o (LSTM), 3 gates r, z, n (GRU), 1 (RNN). The
two biases stay apart: GRU's new gate is ``tanh(W_in x + b_in + r * (W_hn h + b_hn))``, so
``b_hn`` cannot be folded into ``b_in``; and for the LSTM a sum ``b_ih + b_hh`` cannot be split
back, so torch -> flax -> torch would not be lossless. Flax's own ``OptimizedLSTMCell`` keeps
one Dense per gate (``ii``, ``if``, ``ig``, ``io`` without bias on the input side; ``hi``,
``hf``, ``hg``, ``ho`` with bias ``b_ih + b_hh``); ``to_flax_lstm_cell`` converts one layer and
direction of this layout into that one (one way only).

Initialisation: every weight and bias from U(-1/sqrt(H), 1/sqrt(H)), torch's default.
Inter-layer dropout (``dropout`` > 0, ``train=True``) draws from the ``'dropout'`` rng.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["GRU", "LSTM", "RNN", "to_flax_lstm_cell"]

Dtype = Any


def _uniform(bound: float):
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _lstm_step(xw, state, k_hh, b_hh):
    h, c = state
    gates = xw + h @ k_hh
    if b_hh is not None:
        gates = gates + b_hh[None, :]  # (N, G*H) + (G*H,)
    i, f, g, o = jnp.split(gates, 4, axis=-1)  # torch's gate order i, f, g, o
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_step(xw, state, k_hh, b_hh):
    (h,) = state
    hw = h @ k_hh
    if b_hh is not None:
        hw = hw + b_hh[None, :]
    x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)  # torch's gate order r, z, n
    h_r, h_z, h_n = jnp.split(hw, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)  # b_hn sits inside r * (...): it cannot merge with b_in
    h = n + z * (h - n)  # (1 - z) * n + z * h, as ATen writes it
    return (h,), h


def _rnn_step(activation):
    def step(xw, state, k_hh, b_hh):
        (h,) = state
        pre = xw + h @ k_hh
        if b_hh is not None:
            pre = pre + b_hh[None, :]
        h = activation(pre)
        return (h,), h

    return step


def _scan_body(step, k_hh, b_hh, state, xw):
    return step(xw, state, k_hh, b_hh)


def _dropout(mdl: nn.Module, x: jax.Array, rate: float) -> jax.Array:
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(mdl.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _run(mdl, x, hx, train: bool, gates: int, n_states: int, step) -> tuple:
    """The shared body of RNN/LSTM/GRU: checks, parameters, the scans, the output layout."""
    if getattr(mdl, "proj_size", 0):
        raise NotImplementedError(
            f"{type(mdl).__name__}(proj_size={mdl.proj_size}) is not supported; use proj_size=0"
        )
    if x.ndim not in (2, 3):
        raise ValueError(
            f"{type(mdl).__name__} expects input of rank 2 (L, in) or 3, got shape {x.shape}"
        )
    if x.shape[-1] != mdl.input_size:
        raise ValueError(
            f"{type(mdl).__name__}: input has {x.shape[-1]} features in its last axis, "
            f"expected input_size={mdl.input_size} (shape {x.shape})"
        )
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None]  # (L, in) -> (L, 1, in)
    elif mdl.batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (N, L, in) -> (L, N, in)
    n_dir = 2 if mdl.bidirectional else 1
    hidden = mdl.hidden_size
    want = (n_dir * mdl.num_layers, x.shape[1], hidden)
    if hx is None:
        states = tuple(jnp.zeros(want, x.dtype) for _ in range(n_states))
    else:
        states = (hx,) if n_states == 1 else tuple(hx)
        if len(states) != n_states:
            raise ValueError(f"{type(mdl).__name__}: expected {n_states} initial states")
        if unbatched:
            states = tuple(s[:, None] for s in states)  # (D*layers, H) -> (D*layers, 1, H)
        for s in states:
            if s.shape != want:
                raise ValueError(
                    f"{type(mdl).__name__}: initial state has shape {s.shape}, expected {want}"
                )
    init = _uniform(1.0 / math.sqrt(hidden))
    finals = [[] for _ in range(n_states)]
    for layer in range(mdl.num_layers):
        if layer > 0 and train and mdl.dropout > 0:
            x = _dropout(mdl, x, mdl.dropout)
        outs = []
        for direction in range(n_dir):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            in_size = x.shape[-1]
            k_ih = mdl.param(f"kernel_ih{sfx}", init, (in_size, gates * hidden), mdl.param_dtype)
            k_hh = mdl.param(f"kernel_hh{sfx}", init, (hidden, gates * hidden), mdl.param_dtype)
            b_ih = b_hh = None
            if mdl.bias:
                b_ih = mdl.param(f"bias_ih{sfx}", init, (gates * hidden,), mdl.param_dtype)
                b_hh = mdl.param(f"bias_hh{sfx}", init, (gates * hidden,), mdl.param_dtype)
            seq = x[::-1] if direction else x
            xw = seq @ k_ih  # (L, N, in) @ (in, G*H): the input side of every step at once
            if b_ih is not None:
                xw = xw + b_ih[None, None, :]  # (L, N, G*H) + (G*H,)
            idx = layer * n_dir + direction  # torch's h_n order: layer-major, then direction
            init_state = tuple(s[idx] for s in states)
            final, out = jax.lax.scan(partial(_scan_body, step, k_hh, b_hh), init_state, xw)
            outs.append(out[::-1] if direction else out)
            for i, f in enumerate(final):
                finals[i].append(f)
        x = jnp.concatenate(outs, axis=-1) if n_dir == 2 else outs[0]  # (L, N, D*H)
    final_states = tuple(jnp.stack(f) for f in finals)  # each (D*layers, N, H)
    if unbatched:
        x = x[:, 0]
        final_states = tuple(s[:, 0] for s in final_states)
    elif mdl.batch_first:
        x = jnp.swapaxes(x, 0, 1)  # (L, N, D*H) -> (N, L, D*H)
    return x, final_states


class RNN(nn.Module):
    """``torch.nn.RNN``: ``h' = nonlinearity(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    ``__call__(x, hx=None, *, train=False) -> (output, h_n)``; ``hx`` (D*num_layers, N, H).
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, hx: jax.Array | None = None, *, train: bool = False):
        acts = {"tanh": jnp.tanh, "relu": jax.nn.relu}
        if self.nonlinearity not in acts:
            raise ValueError(
                f"RNN: nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )
        out, (h,) = _run(self, x, hx, train, 1, 1, _rnn_step(acts[self.nonlinearity]))
        return out, h


class LSTM(nn.Module):
    """``torch.nn.LSTM`` (gates i, f, g, o); ``proj_size`` > 0 is refused.

    ``__call__(x, hx=None, *, train=False) -> (output, (h_n, c_n))``; ``hx = (h_0, c_0)``.
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, hx: tuple | None = None, *, train: bool = False):
        out, (h, c) = _run(self, x, hx, train, 4, 2, _lstm_step)
        return out, (h, c)


class GRU(nn.Module):
    """``torch.nn.GRU`` (gates r, z, n). ``__call__(x, hx=None, *, train=False) -> (output,
    h_n)``."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, hx: jax.Array | None = None, *, train: bool = False):
        out, (h,) = _run(self, x, hx, train, 3, 1, _gru_step)
        return out, h


def to_flax_lstm_cell(params: dict, layer: int = 0, reverse: bool = False) -> dict:
    """One layer and direction of ``LSTM``'s params as ``flax.linen.OptimizedLSTMCell`` params.

    Returns ``{'ii': {'kernel'}, 'if': ..., 'ig': ..., 'io': ..., 'hi': {'kernel', 'bias'},
    ...}`` with kernels (in, H) / (H, H) and the hidden-side bias ``b_ih + b_hh`` for each gate.
    The sum rounds (about one float32 ulp), so this direction is not invertible: keep ``LSTM``'s
    layout as the master copy.
    """
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    k_ih = jnp.asarray(params[f"kernel_ih{sfx}"])
    k_hh = jnp.asarray(params[f"kernel_hh{sfx}"])
    hidden = k_hh.shape[0]
    bias = None
    if f"bias_ih{sfx}" in params:
        bias = jnp.asarray(params[f"bias_ih{sfx}"]) + jnp.asarray(params[f"bias_hh{sfx}"])
    out: dict = {}
    for g, name in enumerate("ifgo"):
        cols = slice(g * hidden, (g + 1) * hidden)  # gate g's columns of (in, 4H)
        out[f"i{name}"] = {"kernel": k_ih[:, cols]}
        out[f"h{name}"] = {"kernel": k_hh[:, cols]}
        out[f"h{name}"]["bias"] = (
            bias[cols] if bias is not None else jnp.zeros((hidden,), k_hh.dtype)
        )
    return out
