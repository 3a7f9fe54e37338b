"""torch.nn's convolutions as Flax Linen modules, channels first, and ``pad``.

Layouts (N batch, C channels, ``*S`` the 1, 2 or 3 spatial sizes, ``*k`` the kernel's):

* input ``(N, C_in, *S)`` and output ``(N, C_out, *S')``, as torch's;
* ``ConvNd``: ``params/kernel`` ``(*k, C_in/groups, C_out)`` (Flax's ``nn.Conv`` layout; torch's
  weight ``(C_out, C_in/groups, *k)`` permuted), ``params/bias`` ``(C_out,)``;
* ``ConvTransposeNd``: ``params/kernel`` ``(*k, C_out/groups, C_in)``, which is torch's weight
  ``(C_in, C_out/groups, *k)`` permuted ``(2, ..., 1, 0)``, the same permutation as a forward
  convolution's and the layout Flax's ``nn.ConvTranspose(transpose_kernel=True)`` reads for
  ``groups=1``. The kernel is flipped and its channel axes swapped when the layer runs, never
  when it is stored, so conversion is a pure transpose and bitwise lossless both ways.

The forward convolution is ``funcmod.nn.conv.conv_general_dilated`` on the channels-last input
(2-D convolutions take its shape-chosen CPU lowerings); initialisation is torch's,
U(+-1/sqrt(fan_in)) for kernel and bias, fan_in = C_in/groups * prod(k) (C_out/groups * prod(k)
for a transposed convolution, as torch computes it from its weight's second axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from funcmod.nn.conv import conv_general_dilated
from funcmod.nn.init import torch_bias_init, torch_kernel_init

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "conv",
    "conv_transpose",
    "ntuple",
    "pad",
]

IntOrTuple = int | Sequence[int]
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
            f"by groups ({groups})"
        )


def ntuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """torch's int-or-tuple argument as an ``n``-tuple (``kernel_size=3`` -> ``(3, 3)``);
    ``ValueError`` naming the argument when a tuple has another length."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} needs 1 or {n} values, got {value}")
    return value


def pad(x: jax.Array, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> jax.Array:
    """``torch.nn.functional.pad``: ``pad`` lists (before, after) pairs from the LAST axis
    backwards; ``mode`` is 'constant', 'reflect', 'replicate' or 'circular'. Negative amounts
    crop, as in torch."""
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(
            f"pad needs an even number of values, at most 2 * rank ({2 * x.ndim}); got {pad}"
        )
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    grow = [(max(a, 0), max(b, 0)) for a, b in widths]
    kwargs = {"constant_values": value} if mode == "constant" else {}
    out = jnp.pad(x, grow, mode=_PAD_MODES[mode], **kwargs)
    crop = tuple(slice(-min(a, 0), out.shape[i] + min(b, 0)) for i, (a, b) in enumerate(widths))
    return out[crop]


def _channels_last_numbers(n: int) -> tuple[str, str, str]:
    spatial = "DHW"[3 - n :]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _add_bias_channels_last(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> jax.Array:
    """torch's ``conv1d/2d/3d``: ``x`` (N, C_in, *S), ``kernel`` (*k, C_in/groups, C_out) (Flax's
    layout), ``bias`` (C_out,) or None; returns (N, C_out, *S'). ``padding`` is an int, a tuple,
    'same' or 'valid'; ``padding_mode`` 'zeros', 'reflect', 'replicate' or 'circular'."""
    n = kernel.ndim - 2
    k = kernel.shape[:n]
    if x.ndim != n + 2 or x.shape[1] != kernel.shape[-2] * groups:
        raise ValueError(
            f"conv with kernel {kernel.shape} and groups={groups} expects input "
            f"(N, {kernel.shape[-2] * groups}, {n} spatial sizes), got {x.shape}"
        )
    stride, dilation = ntuple(stride, n, "stride"), ntuple(dilation, n, "dilation")
    if padding == "valid":
        pads = [(0, 0)] * n
    elif padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 (as in torch), got {stride}")
        totals = [d * (kk - 1) for d, kk in zip(dilation, k, strict=True)]
        pads = [(t // 2, t - t // 2) for t in totals]  # the extra one after, as torch
    elif isinstance(padding, str):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        pads = [(p, p) for p in ntuple(padding, n, "padding")]
    if padding_mode != "zeros":
        flat = [v for pair in reversed(pads) for v in pair]  # torch's order: last axis first
        x = pad(x, flat, mode=padding_mode)
        pads = [(0, 0)] * n
    dims = _channels_last_numbers(n)
    y = conv_general_dilated(
        jnp.moveaxis(x, 1, -1),  # (N, C, *S) -> (N, *S, C)
        kernel,
        stride,
        pads,
        rhs_dilation=dilation,
        dimension_numbers=dims,
        feature_group_count=groups,
    )
    return jnp.moveaxis(_add_bias_channels_last(y, bias), -1, 1)  # (N, *S', C) -> (N, C, *S')


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
) -> jax.Array:
    """torch's ``conv_transpose1d/2d/3d``: ``x`` (N, C_in, *S), ``kernel`` (*k, C_out/groups, C_in)
    (torch's weight permuted (2, ..., 1, 0)), ``bias`` (C_out,); returns (N, C_out, *S') with
    S' = (S - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.

    It is the forward convolution of the input dilated by ``stride`` with the kernel flipped in
    space and its channel axes swapped per group, padded d*(k-1)-p before and d*(k-1)-p+op after
    (a negative amount crops the output instead)."""
    n = kernel.ndim - 2
    k, out_g, c_in = kernel.shape[:n], kernel.shape[n], kernel.shape[n + 1]
    if x.ndim != n + 2 or x.shape[1] != c_in or c_in % groups:
        raise ValueError(
            f"conv_transpose with kernel {kernel.shape} (*k, C_out/groups, C_in) and "
            f"groups={groups} expects input (N, {c_in}, {n} spatial sizes), got {x.shape}"
        )
    stride, dilation = ntuple(stride, n, "stride"), ntuple(dilation, n, "dilation")
    padding, output_padding = ntuple(padding, n, "padding"), ntuple(output_padding, n, "op")
    for op, s, d in zip(output_padding, stride, dilation, strict=True):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation (as in torch), got "
                f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
    # (*k, C_out/g, C_in) -> (*k, C_out/g, g, C_in/g) -> (*k, C_in/g, g, C_out/g)
    # -> (*k, C_in/g, C_out): the forward kernel, output channel j * C_out/g + o for group j
    fwd = kernel.reshape(*k, out_g, groups, c_in // groups)
    fwd = jnp.transpose(fwd, (*range(n), n + 2, n + 1, n)).reshape(*k, c_in // groups, -1)
    fwd = jnp.flip(fwd, axis=tuple(range(n)))
    pads = [
        (d * (kk - 1) - p, d * (kk - 1) - p + op)
        for d, kk, p, op in zip(dilation, k, padding, output_padding, strict=True)
    ]
    y = conv_general_dilated(
        jnp.moveaxis(x, 1, -1),  # (N, C, *S) -> (N, *S, C)
        fwd,
        (1,) * n,
        [(max(a, 0), max(b, 0)) for a, b in pads],
        lhs_dilation=stride,
        rhs_dilation=dilation,
        dimension_numbers=_channels_last_numbers(n),
        feature_group_count=groups,
    )
    crop = (
        slice(None),
        *tuple(slice(-min(a, 0), y.shape[1 + i] + min(b, 0)) for i, (a, b) in enumerate(pads)),
    )
    y = _add_bias_channels_last(y[crop], bias)
    return jnp.moveaxis(y, -1, 1)  # (N, *S', C) -> (N, C, *S')


class _ConvNd(nn.Module):
    in_channels: int
    out_channels: int
    kernel_size: IntOrTuple
    stride: IntOrTuple = 1
    padding: IntOrTuple | str = 0
    dilation: IntOrTuple = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    param_dtype: Any = jnp.float32

    ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` (N, in_channels, *S) -> (N, out_channels, *S')."""
        _check_groups(self.in_channels, self.out_channels, self.groups)
        if self.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                "padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got "
                f"{self.padding_mode!r}"
            )
        k = ntuple(self.kernel_size, self.ndim, "kernel_size")
        fan_in = self.in_channels // self.groups * math.prod(k)
        shape = (*k, self.in_channels // self.groups, self.out_channels)
        kernel = self.param("kernel", torch_kernel_init(), shape, self.param_dtype)
        bias = (
            self.param("bias", torch_bias_init(fan_in), (self.out_channels,), self.param_dtype)
            if self.bias
            else None
        )
        return conv(
            x,
            kernel,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.padding_mode,
        )


class Conv1d(_ConvNd):
    """``torch.nn.Conv1d``: (N, C_in, L) -> (N, C_out, L'); kernel (k, C_in/groups, C_out)."""

    ndim: ClassVar[int] = 1


class Conv2d(_ConvNd):
    """``torch.nn.Conv2d``: (N, C_in, H, W) -> (N, C_out, H', W'); kernel (kh, kw, C_in/groups,
    C_out)."""

    ndim: ClassVar[int] = 2


class Conv3d(_ConvNd):
    """``torch.nn.Conv3d``: (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""

    ndim: ClassVar[int] = 3


class _ConvTransposeNd(nn.Module):
    in_channels: int
    out_channels: int
    kernel_size: IntOrTuple
    stride: IntOrTuple = 1
    padding: IntOrTuple = 0
    output_padding: IntOrTuple = 0
    groups: int = 1
    bias: bool = True
    dilation: IntOrTuple = 1
    padding_mode: str = "zeros"
    param_dtype: Any = jnp.float32

    ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` (N, in_channels, *S) -> (N, out_channels, *S')."""
        _check_groups(self.in_channels, self.out_channels, self.groups)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"transposed convolutions support only padding_mode='zeros' (as torch), got "
                f"{self.padding_mode!r}"
            )
        k = ntuple(self.kernel_size, self.ndim, "kernel_size")
        out_g = self.out_channels // self.groups
        shape = (*k, out_g, self.in_channels)
        # fan_in is torch's: its weight (C_in, C_out/g, *k) has C_out/g * prod(k) per row, which
        # is also what variance_scaling reads from axis -2 of this kernel
        kernel = self.param("kernel", torch_kernel_init(), shape, self.param_dtype)
        bias = (
            self.param(
                "bias",
                torch_bias_init(out_g * math.prod(k)),
                (self.out_channels,),
                self.param_dtype,
            )
            if self.bias
            else None
        )
        return conv_transpose(
            x,
            kernel,
            bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class ConvTranspose1d(_ConvTransposeNd):
    """``torch.nn.ConvTranspose1d``: (N, C_in, L) -> (N, C_out, L'); kernel (k, C_out/g, C_in)."""

    ndim: ClassVar[int] = 1


class ConvTranspose2d(_ConvTransposeNd):
    """``torch.nn.ConvTranspose2d``: (N, C_in, H, W) -> (N, C_out, H', W'); kernel
    (kh, kw, C_out/groups, C_in)."""

    ndim: ClassVar[int] = 2


class ConvTranspose3d(_ConvTransposeNd):
    """``torch.nn.ConvTranspose3d``: (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""

    ndim: ClassVar[int] = 3
