"""torch.nn's pooling, upsampling and pixel-shuffle layers as Flax Linen modules, channels
first, with the functions they apply. None has parameters.

Windows follow torch: the stride defaults to the kernel size, padding is symmetric, and with
``ceil_mode`` a last window may start in the right padding but not beyond it. ``AvgPool``'s
divisor counts the zero padding (``count_include_pad=True``) but never the extra cells a
``ceil_mode`` window overhangs. Adaptive pools use torch's bins [floor(i*L/out),
ceil((i+1)*L/out)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from funcmod.nn.convolution import IntOrTuple, ntuple

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "MaxPool1d",
    "MaxPool2d",
    "PixelShuffle",
    "Upsample",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "interpolate",
    "max_pool",
    "pixel_shuffle",
]


def _windows(x, n, kernel_size, stride, padding, dilation, ceil_mode):
    """Per spatial axis: (kernel, stride, dilation, (pad before, pad after incl. ceil extra))."""
    if x.ndim != n + 2:
        raise ValueError(f"a {n}-d pool expects input (N, C, {n} spatial sizes), got {x.shape}")
    k = ntuple(kernel_size, n, "kernel_size")
    s = k if stride is None else ntuple(stride, n, "stride")
    p, d = ntuple(padding, n, "padding"), ntuple(dilation, n, "dilation")
    out = []
    for size, kk, ss, pp, dd in zip(x.shape[2:], k, s, p, d, strict=True):
        if pp > kk // 2:
            raise ValueError(
                f"pad should be at most half of the effective kernel size, got "
                f"padding={p} for kernel_size={k}"
            )
        span = size + 2 * pp - dd * (kk - 1) - 1
        count = (-(-span // ss) if ceil_mode else span // ss) + 1
        if ceil_mode and (count - 1) * ss >= size + pp:
            count -= 1  # torch: the last window must start inside the input or left padding
        if count < 1:
            raise ValueError(f"pool of size {k} leaves no output for input {x.shape}")
        after = (count - 1) * ss + dd * (kk - 1) + 1 - size - pp
        out.append((kk, ss, dd, (pp, max(after, 0)), count))
    return out


# One spatial axis of a pool: (kernel, stride, dilation, (pad before, pad after), output size).
_Window = tuple[int, int, int, tuple[int, int], int]


def _taps(shape: Sequence[int], w: Sequence[_Window]):
    """Per tap of the window, in torch's scan order (row-major): the strided slice of the
    padded input that holds that tap of every window, as ``lax.slice``'s (start, limit,
    strides)."""
    for tap in np.ndindex(*(a[0] for a in w)):
        start = (0, 0, *(t * a[2] for t, a in zip(tap, w, strict=True)))
        limit = (
            *shape[:2],
            *(s + (a[4] - 1) * a[1] + 1 for s, a in zip(start[2:], w, strict=True)),
        )
        yield start, limit, (1, 1, *(a[1] for a in w))


def _padding(w: Sequence[_Window]) -> tuple[tuple[int, int], ...]:
    return ((0, 0), (0, 0), *(a[3] for a in w))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, w: tuple[_Window, ...]) -> jax.Array:
    """The maximum of every window (padding is -inf), (N, C, *counts); a last ``ceil_mode``
    window may overhang the padding, which the caller crops. Its derivative is torch's: the
    whole gradient of a window to the one element ``_argmax_taps`` names."""
    if all(a[2] == 1 for a in w):
        one = (1, 1)
        window, strides = one + tuple(a[0] for a in w), one + tuple(a[1] for a in w)
        return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, _padding(w))
    # Dilated windows (lax's reduce_window has no derivative for them): the maximum over the
    # taps, one strided slice of the padded input per tap.
    xpad = jnp.pad(x, _padding(w), constant_values=-jnp.inf)
    y = None
    for start, limit, strides in _taps(x.shape, w):
        part = lax.slice(xpad, start, limit, strides)
        y = part if y is None else lax.max(y, part)
    return y


def _argmax_taps(x: jax.Array, y: jax.Array, w: Sequence[_Window], special: bool) -> jax.Array:
    """The tap (its index in ``_taps``' order) whose element each window's maximum ``y``
    comes from, as torch's CPU kernel picks it: the first element equal to the maximum (ties
    are common after a ReLU). With ``special``, also right where a window holds NaN (then the
    last NaN) or only -inf (then its first real element, never a padding cell); without, those
    windows' picks are wrong, at a third of the cost."""
    taps = list(_taps(x.shape, w))
    xpad = jnp.pad(x, _padding(w), constant_values=-jnp.inf)
    inside = jnp.pad(jnp.ones(x.shape[2:], bool), _padding(w)[2:])  # spatial axes only
    dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
    first = last_nan = jnp.zeros(y.shape, dtype)
    for i, (start, limit, strides) in reversed(list(enumerate(taps))):
        hit = lax.slice(xpad, start, limit, strides) == y
        if special:
            hit &= lax.slice(inside, start[2:], limit[2:], strides[2:])[None, None]
        first = jnp.where(hit, dtype(i), first)
    if not special:
        return first
    for i, (start, limit, strides) in enumerate(taps):
        last_nan = jnp.where(jnp.isnan(lax.slice(xpad, start, limit, strides)), dtype(i), last_nan)
    return jnp.where(jnp.isnan(y), last_nan, first)


@_window_max.defjvp
def _window_max_jvp(
    w: tuple[_Window, ...], primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    # The tangent of each window is its chosen element's tangent: a sum over the taps of
    # masked strided slices, linear in the tangent, which JAX transposes into masked padded
    # sums (the gradient). XLA:CPU runs this about 3x faster than the select-and-scatter that
    # reduce_window's own derivative becomes (docs/pitfalls.md, "Max pooling's gradient").
    (x,), (t,) = primals, tangents
    y = _window_max(x, w)
    # The cond skips the NaN and -inf handling where no window needs it, and its result is
    # materialised: inlined, XLA recomputed the choice inside the gradient's fusion for each
    # of its taps, which ran 2.5x slower (measured in the pitfalls section).
    special = jnp.any(jnp.isnan(y) | (y == -jnp.inf))
    chosen = lax.cond(
        special,
        functools.partial(_argmax_taps, w=w, special=True),
        functools.partial(_argmax_taps, w=w, special=False),
        x,
        y,
    )
    tpad = jnp.pad(t, _padding(w))
    zero = jnp.zeros((), t.dtype)
    out = None
    for i, (start, limit, strides) in enumerate(_taps(x.shape, w)):
        term = jnp.where(chosen == i, lax.slice(tpad, start, limit, strides), zero)
        out = term if out is None else out + term
    return y, out


def max_pool(
    x: jax.Array,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    ceil_mode: bool = False,
    ndim: int = 2,
) -> jax.Array:
    """torch's ``max_pool1d/2d``: ``x`` (N, C, *S) with ``ndim`` spatial axes -> (N, C, *S').

    The gradient is torch's too: each window's gradient goes to one element, the first equal
    to its maximum in row-major window order (the last NaN where the window holds NaN).
    """
    w = tuple(_windows(x, ndim, kernel_size, stride, padding, dilation, ceil_mode))
    crop = (slice(None), slice(None), *(slice(0, a[4]) for a in w))
    return _window_max(x, w)[crop]


def avg_pool(
    x: jax.Array,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None = None,
    padding: IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    ndim: int = 2,
) -> jax.Array:
    """torch's ``avg_pool1d/2d``: ``x`` (N, C, *S) with ``ndim`` spatial axes -> (N, C, *S')."""
    w = _windows(x, ndim, kernel_size, stride, padding, 1, ceil_mode)
    window = (1, 1, *tuple(a[0] for a in w))
    strides = (1, 1, *tuple(a[1] for a in w))
    pads = ((0, 0), (0, 0), *tuple(a[3] for a in w))
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
    # The divisor per output cell: the window's cells inside the input (plus, with
    # count_include_pad, inside the symmetric padding), a numpy constant, one factor per axis.
    counts = np.ones((1, 1), np.float64)
    for size, (kk, ss, _, (pp, _), out) in zip(x.shape[2:], w, strict=True):
        start = np.arange(out) * ss - pp
        if count_include_pad:
            per_axis = np.minimum(start + kk, size + pp) - start
        else:
            per_axis = np.minimum(start + kk, size) - np.maximum(start, 0)
        counts = np.multiply.outer(counts, per_axis)
    crop = (slice(None), slice(None), *tuple(slice(0, a[4]) for a in w))
    return total[crop] / jnp.asarray(counts, x.dtype)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _out_sizes(x: jax.Array, output_size: Any, n: int) -> tuple[int, ...]:
    if x.ndim != n + 2:
        raise ValueError(f"a {n}-d adaptive pool expects (N, C, {n} spatial sizes), got {x.shape}")
    sizes = (
        (output_size,) * n if isinstance(output_size, int) or output_size is None else output_size
    )
    return tuple(s if o is None else int(o) for s, o in zip(x.shape[2:], sizes, strict=True))


def adaptive_avg_pool(x: jax.Array, output_size: Any, ndim: int = 2) -> jax.Array:
    """torch's ``adaptive_avg_pool1d/2d``: (N, C, *S) -> (N, C, *output_size); a None entry
    keeps that size. Each axis is one matrix product with the bins' averaging weights."""
    for axis, out in enumerate(_out_sizes(x, output_size, ndim)):
        size = x.shape[2 + axis]
        m = np.zeros((out, size))
        for i, (a, b) in enumerate(_bins(size, out)):
            m[i, a:b] = 1.0 / (b - a)
        y = jnp.tensordot(jnp.asarray(m, x.dtype), x, axes=((1,), (2 + axis,)))  # out first
        x = jnp.moveaxis(y, 0, 2 + axis)
    return x


def adaptive_max_pool(x: jax.Array, output_size: Any, ndim: int = 2) -> jax.Array:
    """torch's ``adaptive_max_pool1d/2d`` (values only): (N, C, *S) -> (N, C, *output_size)."""
    for axis, out in enumerate(_out_sizes(x, output_size, ndim)):
        parts = [
            jnp.max(lax.slice_in_dim(x, a, b, axis=2 + axis), axis=2 + axis, keepdims=True)
            for a, b in _bins(x.shape[2 + axis], out)
        ]
        x = jnp.concatenate(parts, axis=2 + axis)
    return x


def _interp_matrix(size: int, out: int, mode: str, align_corners: bool, scale: float | None):
    """(out, size) weights of torch's nearest / linear interpolation along one axis."""
    m = np.zeros((out, size))
    dst = np.arange(out, dtype=np.float64)
    if mode == "nearest":
        # torch picks the source index in float32 arithmetic whatever the dtype (floorf of
        # dst * scale); an exact product can round either way, so compute it the same way
        ratio = np.float32(size) / np.float32(out) if scale is None else np.float32(1.0 / scale)
        src = np.minimum(np.floor(dst.astype(np.float32) * ratio).astype(int), size - 1)
        m[np.arange(out), src] = 1.0
        return m
    if align_corners:
        src = dst * ((size - 1) / (out - 1) if out > 1 else 0.0)
    else:
        ratio = size / out if scale is None else 1.0 / scale
        src = np.maximum((dst + 0.5) * ratio - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    lam = src - lo
    np.add.at(m, (np.arange(out), lo), 1.0 - lam)
    np.add.at(m, (np.arange(out), hi), lam)
    return m


def interpolate(
    x: jax.Array,
    size: IntOrTuple | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> jax.Array:
    """torch's ``interpolate`` for ``mode`` 'nearest', 'linear' (3-d input) and 'bilinear' (4-d):
    ``x`` (N, C, *S) -> (N, C, *size), or S * scale_factor rounded down; with a scale factor
    the source coordinates use 1/scale_factor, as torch does."""
    n = x.ndim - 2
    if mode not in ("nearest", "linear", "bilinear") or (
        mode != "nearest" and n != {"linear": 1, "bilinear": 2}[mode]
    ):
        raise ValueError(
            f"interpolate supports 'nearest', 'linear' on (N, C, L) and 'bilinear' "
            f"on (N, C, H, W); got mode={mode!r} for input {x.shape}"
        )
    if mode == "nearest" and align_corners is not None:
        raise ValueError("align_corners applies only to the linear modes (as in torch)")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    if size is not None:
        outs, scales = ntuple(size, n, "size"), (None,) * n
    else:
        scales = (
            (float(scale_factor),) * n
            if isinstance(scale_factor, int | float)
            else tuple(float(s) for s in scale_factor)
        )
        if len(scales) != n:
            raise ValueError(f"scale_factor needs 1 or {n} values, got {scale_factor}")
        outs = tuple(math.floor(s * f) for s, f in zip(x.shape[2:], scales, strict=True))
    for axis, (out, scale) in enumerate(zip(outs, scales, strict=True)):
        m = _interp_matrix(x.shape[2 + axis], out, mode, bool(align_corners), scale)
        y = jnp.tensordot(jnp.asarray(m, x.dtype), x, axes=((1,), (2 + axis,)))  # out first
        x = jnp.moveaxis(y, 0, 2 + axis)
    return x


def pixel_shuffle(x: jax.Array, upscale_factor: int) -> jax.Array:
    """(N, C*r*r, H, W) -> (N, C, H*r, W*r), torch's channel order."""
    r = upscale_factor
    if x.ndim != 4 or x.shape[1] % (r * r):
        raise ValueError(f"pixel_shuffle({r}) expects (N, C*{r * r}, H, W), got {x.shape}")
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w)  # (N, C, r_h, r_w, H, W)
    y = jnp.transpose(y, (0, 1, 4, 2, 5, 3))  # -> (N, C, H, r_h, W, r_w)
    return y.reshape(n, c // (r * r), h * r, w * r)


class _MaxPool(nn.Module):
    kernel_size: IntOrTuple
    stride: IntOrTuple | None = None
    padding: IntOrTuple = 0
    dilation: IntOrTuple = 1
    ceil_mode: bool = False

    ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.ndim
        )


class MaxPool1d(_MaxPool):
    """``torch.nn.MaxPool1d`` (no ``return_indices``): (N, C, L) -> (N, C, L')."""

    ndim: ClassVar[int] = 1


class MaxPool2d(_MaxPool):
    """``torch.nn.MaxPool2d`` (no ``return_indices``): (N, C, H, W) -> (N, C, H', W')."""

    ndim: ClassVar[int] = 2


class _AvgPool(nn.Module):
    kernel_size: IntOrTuple
    stride: IntOrTuple | None = None
    padding: IntOrTuple = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.ndim,
        )


class AvgPool1d(_AvgPool):
    """``torch.nn.AvgPool1d``: (N, C, L) -> (N, C, L')."""

    ndim: ClassVar[int] = 1


class AvgPool2d(_AvgPool):
    """``torch.nn.AvgPool2d`` (no ``divisor_override``): (N, C, H, W) -> (N, C, H', W')."""

    ndim: ClassVar[int] = 2


class AdaptiveAvgPool1d(nn.Module):
    """``torch.nn.AdaptiveAvgPool1d``: (N, C, L) -> (N, C, output_size), torch's bins."""

    output_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return adaptive_avg_pool(x, self.output_size, 1)


class AdaptiveAvgPool2d(nn.Module):
    """``torch.nn.AdaptiveAvgPool2d``: (N, C, H, W) -> (N, C, *output_size), torch's bins
    (an int gives a square output)."""

    output_size: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return adaptive_avg_pool(x, self.output_size, 2)


class AdaptiveMaxPool2d(nn.Module):
    """``torch.nn.AdaptiveMaxPool2d`` (no ``return_indices``)."""

    output_size: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return adaptive_max_pool(x, self.output_size, 2)


class Upsample(nn.Module):
    """``torch.nn.Upsample``: ``interpolate`` with the layer's arguments."""

    size: Any = None
    scale_factor: Any = None
    mode: str = "nearest"
    align_corners: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)


class PixelShuffle(nn.Module):
    """``torch.nn.PixelShuffle``: (N, C * r * r, H, W) -> (N, C, H * r, W * r), ``r`` the
    ``upscale_factor``."""

    upscale_factor: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(x, self.upscale_factor)
