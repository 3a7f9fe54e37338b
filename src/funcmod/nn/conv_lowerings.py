"""The formulations of a 2-D convolution that ``funcmod.nn.conv`` chooses from on CPU.

Every function here computes ``lax.conv_general_dilated`` of an (N, H, W, C) input and an
(kh, kw, C/groups, O) kernel (Flax's NHWC / HWIO layouts) for a ``ConvSpec``: window strides,
kernel (rhs) dilation, explicit non-negative padding, ``feature_group_count``. The input is
never dilated (transposed convolutions go to lax). Each is a plain composition of ``jax.numpy``
and ``lax`` operations, linear in each operand, so JAX differentiates and transposes it:

* ``lax_conv``: ``lax.conv_general_dilated`` itself (XLA's convolution kernel).
* ``direct``: the sum over taps (i, j, c) of a shifted input channel times a kernel row, one
  broadcast multiply-add per tap, fused by XLA into one loop over the output (groups=1).
* ``depthwise``: the sum over the kh * kw window positions of a shifted input times a kernel row
  over all channels at once (``C/groups == 1``: depthwise, channel multiplier allowed).
* ``depthwise_input_tangent``: ``depthwise`` as a linear function of the input whose transpose
  (the input gradient) is ``depthwise_input_grad``: per phase of the stride, the taps that reach
  it summed over a shifted cotangent, then the phases interleaved. JAX's own transpose of
  ``depthwise`` (one padded, strided scatter per tap) was up to 8x slower (``docs/pitfalls.md``).
* ``patches``: im2col, the kh * kw shifted inputs concatenated along the channel axis into an
  (N * Ho * Wo, kh * kw * C) matrix, times the kernel as a (kh * kw * C, O) matrix: one matmul
  (groups=1).
* ``chunked``: ``patches`` for a few images at a time in a loop (``lax.map``), each chunk's
  patches matrix at most ``CHUNK_PATCHES_ELEMENTS``, so that it is still in the cache when its
  matmul reads it; its transpose in the kernel (the kernel gradient) is a loop that adds up
  each chunk's ``patches^T @ dy`` (groups=1).
* ``kernel_tangent_lax``: ``lax_conv(x, dk)`` written so that its transpose with respect to
  ``dk`` (the kernel gradient) is XLA's standard NHWC/HWIO convolution (see its docstring).

Each formulation sums in its own order, so results differ from lax's and from PyTorch's by
float reassociation only (tests/test_conv.py holds every one to the parity targets).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CHUNK_PATCHES_ELEMENTS",
    "NHWC",
    "ConvSpec",
    "chunk_splits_batch",
    "chunked",
    "depthwise",
    "depthwise_input_grad",
    "depthwise_input_tangent",
    "direct",
    "images_per_chunk",
    "kernel_tangent_lax",
    "lax_conv",
    "output_size",
    "patches",
]

NHWC = ("NHWC", "HWIO", "NHWC")
# The most patches elements one chunk of ``chunked`` writes before its matmul reads them: 2 MiB
# in float32, about a core's L2 cache. On kernel gradients alone (six ResNet-18 and SimpleCNN
# shapes at batch 32 and 256, 1 to 32 images per chunk), the fastest chunks held 0.6-2.4 MiB of
# patches; 3.5 MiB chunks were 2.3x slower than 1.8 MiB ones on 256 RGB images of 32x32. What
# the rule gains with it is in docs/pitfalls.md ("The kernel gradient by chunks").
CHUNK_PATCHES_ELEMENTS = 2**19


class ConvSpec(NamedTuple):
    """The static part of a 2-D NHWC / HWIO convolution (hashable: a ``custom_jvp`` static
    argument).

    Attributes:
      strides: window strides (sh, sw).
      padding: ((top, bottom), (left, right)), non-negative.
      dilation: kernel (rhs) dilation (dh, dw).
      groups: ``feature_group_count``.
      precision: as for ``lax.conv_general_dilated`` (None, a ``Precision`` or a pair).
    """

    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    precision: Any = None


def output_size(size: int, window: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
    """The output length of one spatial axis: floor((size + pads - d * (k - 1) - 1) / s) + 1."""
    return (size + pad[0] + pad[1] - dilation * (window - 1) - 1) // stride + 1


def lax_conv(x: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """``lax.conv_general_dilated`` of (N, H, W, C) and (kh, kw, C/g, O): (N, Ho, Wo, O)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        spec.strides,
        spec.padding,
        rhs_dilation=spec.dilation,
        dimension_numbers=NHWC,
        feature_group_count=spec.groups,
        precision=spec.precision,
    )


def _taps(x: jax.Array, kh: int, kw: int, spec: ConvSpec) -> list[jax.Array]:
    """The kh * kw shifted, strided views of the padded input, tap (i, j) at i * kw + j, each
    (N, Ho, Wo, C): ``tap[n, h, w, c] = xpad[n, h * sh + i * dh, w * sw + j * dw, c]``."""
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    n, height, width, c = x.shape
    ho = output_size(height, kh, sh, dh, spec.padding[0])
    wo = output_size(width, kw, sw, dw, spec.padding[1])
    xp = jnp.pad(x, ((0, 0), spec.padding[0], spec.padding[1], (0, 0)))  # (N, Hp, Wp, C)
    return [
        lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (n, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def direct(x: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """The convolution as kh * kw * C broadcast multiply-adds (groups=1):
    ``y = sum over (i, j, c) of tap_ij[..., c:c+1] * kernel[i, j, c]``, summed in that order."""
    kh, kw, channels, _ = kernel.shape
    y = None
    for t, tap in enumerate(_taps(x, kh, kw, spec)):
        i, j = divmod(t, kw)
        for c in range(channels):
            # (N, Ho, Wo, 1) * (1, 1, 1, O) -> (N, Ho, Wo, O)
            term = tap[..., c : c + 1] * kernel[i, j, c][None, None, None]
            y = term if y is None else y + term
    return y


def depthwise(x: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """A depthwise convolution (groups == C, kernel (kh, kw, 1, O), O = C * m) as kh * kw
    broadcast multiply-adds over all channels: output channel o reads input channel o // m."""
    kh, kw, one, out = kernel.shape
    channels = x.shape[-1]
    if one != 1 or spec.groups != channels or out % channels:
        raise ValueError(
            f"depthwise needs kernel (kh, kw, 1, C * m) and groups == C = {channels}; got "
            f"kernel {kernel.shape}, groups={spec.groups}"
        )
    if out != channels:  # channel multiplier m: (N, H, W, C) -> (N, H, W, C * m)
        x = jnp.repeat(x, out // channels, axis=-1)
    y = None
    for t, tap in enumerate(_taps(x, kh, kw, spec)):
        i, j = divmod(t, kw)
        term = tap * kernel[i, j, 0][None, None, None]  # (N, Ho, Wo, O) * (1, 1, 1, O)
        y = term if y is None else y + term
    return y


def depthwise_input_grad(
    ct: jax.Array, kernel: jax.Array, spec: ConvSpec, in_shape: tuple[int, ...]
) -> jax.Array:
    """The transpose of ``depthwise`` in its input: the input gradient (N, H, W, C) of an
    output cotangent ``ct`` (N, Ho, Wo, O), ``in_shape`` the input's shape.

    Input row ``q`` receives ``ct[h] * k[i]`` wherever ``h * s + i * d == q + pad``. Split the
    rows by phase ``a = q mod s``: row ``a + s * m`` receives, from each tap ``i`` with
    ``(a + pad - i * d) mod s == 0``, ``ct[m + (a + pad - i * d) // s] * k[i]``. So each phase
    (one per pair of row and column phases) is a fused sum of shifted slices of the zero-padded
    cotangent, computed at the phase's own resolution (the forward pass's work in total, no
    multiplications by the zeros a strided scatter would add), and the phases interleave into
    the rows and columns by one reshape. A channel multiplier m sums its m outputs per input
    channel at the end."""
    kh, kw, _, out = kernel.shape
    n, height, width, channels = in_shape
    plan = []  # per axis: stride, phase length, [(tap, offset) per phase], pad low, pad high
    for axis, (k_size, size) in enumerate(((kh, height), (kw, width))):
        s, d, pad = spec.strides[axis], spec.dilation[axis], spec.padding[axis][0]
        length = -(-size // s)
        phases = [
            [(i, (a + pad - i * d) // s) for i in range(k_size) if (a + pad - i * d) % s == 0]
            for a in range(s)
        ]
        offsets = [o for phase in phases for _, o in phase] or [0]
        low = max(0, -min(offsets))
        high = max(0, length - 1 + max(offsets) - (ct.shape[1 + axis] - 1))
        plan.append((s, length, phases, low, high))
    (sh, mh, rows, low_h, high_h), (sw, mw, cols, low_w, high_w) = plan
    padded = jnp.pad(ct, ((0, 0), (low_h, high_h), (low_w, high_w), (0, 0)))
    by_row = []
    for row_taps in rows:
        by_col = []
        for col_taps in cols:
            y = jnp.zeros((n, mh, mw, out), ct.dtype)
            for i, oi in row_taps:
                for j, oj in col_taps:
                    start = (0, oi + low_h, oj + low_w, 0)
                    tap = lax.slice(padded, start, (n, start[1] + mh, start[2] + mw, out))
                    y = y + tap * kernel[i, j, 0][None, None, None]
            by_col.append(y)
        by_row.append(jnp.stack(by_col, axis=3))  # (N, Mh, Mw, sw, O)
    phased = jnp.stack(by_row, axis=2)  # (N, Mh, sh, Mw, sw, O)
    dx = phased.reshape(n, mh * sh, mw * sw, out)[:, :height, :width]
    if out != channels:  # output channel o reads input channel o // m
        dx = dx.reshape(n, height, width, channels, out // channels).sum(axis=-1)
    return dx


def depthwise_input_tangent(dx: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """``depthwise(dx, kernel)``, computed as the transpose of ``depthwise_input_grad``, so that
    its own transpose, the input gradient in reverse mode, is ``depthwise_input_grad``'s
    phase-split sum and not JAX's transpose of ``depthwise`` (one strided scatter per tap).

    Every step is an ordinary linear ``lax`` operation (pad, slice, multiply by a kernel entry,
    stack, reshape, sum), so forward mode, ``vmap`` and higher derivatives, in the kernel too,
    work as for any JAX function; ``jax.custom_derivatives.linear_call`` would have given the
    same transpose without the double transposition, but has no batching rule and no
    derivative in its non-linear operand (the kernel here)."""
    kh, kw, _, out = kernel.shape
    n, height, width, _ = dx.shape
    ho = output_size(height, kh, spec.strides[0], spec.dilation[0], spec.padding[0])
    wo = output_size(width, kw, spec.strides[1], spec.dilation[1], spec.padding[1])
    cotangent = jax.ShapeDtypeStruct((n, ho, wo, out), dx.dtype)
    in_shape = tuple(dx.shape)
    transpose = jax.linear_transpose(
        lambda ct: depthwise_input_grad(ct, kernel, spec, in_shape), cotangent
    )
    return transpose(dx)[0]


def patches(x: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """im2col and one matmul (groups=1): (N * Ho * Wo, kh * kw * C) @ (kh * kw * C, O)."""
    kh, kw, channels, out = kernel.shape
    taps = _taps(x, kh, kw, spec)
    n, ho, wo, _ = taps[0].shape
    # (N, Ho, Wo, kh * kw * C), tap-major like the kernel's (kh, kw, C) flattening
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    y = jnp.dot(
        cols.reshape(n * ho * wo, kh * kw * channels),
        kernel.reshape(kh * kw * channels, out),
        precision=spec.precision,
    )
    return y.reshape(n, ho, wo, out)


def images_per_chunk(lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...], spec: ConvSpec) -> int:
    """How many images ``chunked`` takes per chunk of an (N, H, W, C) input and a (kh, kw, C, O)
    kernel: the largest divisor of N whose chunk has at most ``CHUNK_PATCHES_ELEMENTS`` patches
    elements (Ho * Wo * kh * kw * C per image), at least 1. A divisor, so that every chunk has
    the same shape (one loop body, no remainder)."""
    kh, kw, channels, _ = rhs_shape
    ho = output_size(lhs_shape[1], kh, spec.strides[0], spec.dilation[0], spec.padding[0])
    wo = output_size(lhs_shape[2], kw, spec.strides[1], spec.dilation[1], spec.padding[1])
    batch = lhs_shape[0]
    fit = max(1, CHUNK_PATCHES_ELEMENTS // max(1, ho * wo * kh * kw * channels))
    return max(d for d in range(1, min(batch, fit) + 1) if batch % d == 0)


def chunk_splits_batch(
    lhs_shape: tuple[int, ...], rhs_shape: tuple[int, ...], spec: ConvSpec
) -> bool:
    """Whether ``chunked`` loops over more than one chunk for these shapes; where it does not,
    it is ``patches`` itself (the same program), so timing both measures one program twice."""
    return images_per_chunk(lhs_shape, rhs_shape, spec) < lhs_shape[0]


def chunked(x: jax.Array, kernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """``patches`` over chunks of ``images_per_chunk`` images, one chunk per iteration of a
    ``lax.map`` (groups=1); ``patches`` itself when the whole batch is one chunk.

    The chunk's convolution is rematerialised (``jax.checkpoint``): without it, reverse mode
    would compute every chunk's patches in the forward loop and keep them all for the backward
    one (the whole (N * Ho * Wo, K) matrix again, written long before it is read); with it, the
    backward loop rebuilds each chunk's patches right before the matmul that reads them."""
    n = x.shape[0]
    per = images_per_chunk(x.shape, kernel.shape, spec)
    if per == n:
        return patches(x, kernel, spec)
    chunk = jax.checkpoint(lambda images: patches(images, kernel, spec), prevent_cse=False)
    ys = lax.map(chunk, x.reshape(n // per, per, *x.shape[1:]))
    return ys.reshape(n, *ys.shape[2:])


def kernel_tangent_lax(x: jax.Array, dkernel: jax.Array, spec: ConvSpec) -> jax.Array:
    """``lax_conv(x, dkernel)`` (groups=1), arranged so that its transpose (the kernel
    gradient) is the convolution XLA:CPU runs fast everywhere.

    JAX's transpose rule turns ``conv(x, k)`` into a kernel-gradient convolution whose operands
    are in a non-standard layout. At the top level of a program XLA:CPU transposes them into
    its standard layout and calls its fast kernel; inside a loop (``lax.scan``, e.g.
    ``funcmod.train.make_train_epoch``) it does not, and runs a generic kernel an order of
    magnitude slower (``tests/test_conv.py`` checks the layout in the compiled loop). Here the
    layouts are explicit: the transpose is a convolution of ``x`` as (C, H, W, N) with the
    output gradient as (H, W, N, O), NHWC and HWIO with the batch as the feature axis,
    followed by a small (C, kh, kw, O) -> (kh, kw, C, O) transpose.

    Args:
      x: (N, H, W, C) input.
      dkernel: (kh, kw, C, O) kernel tangent.

    Returns:
      (N, Ho, Wo, O), equal to ``lax_conv(x, dkernel, spec)``.
    """
    lhs = jnp.transpose(x, (3, 1, 2, 0))  # NHWC -> CHWN
    rhs = jnp.transpose(dkernel, (2, 0, 1, 3))  # (kh, kw, C, O) -> (C, kh, kw, O)
    numbers = lax.ConvDimensionNumbers(
        lhs_spec=(3, 0, 1, 2),  # batch N is axis 3, feature C axis 0
        rhs_spec=(3, 0, 1, 2),  # out feature O is axis 3, in feature C axis 0
        out_spec=(2, 3, 0, 1),  # (Ho, Wo, N, O): batch axis 2, feature axis 3
    )
    out = lax.conv_general_dilated(
        lhs,
        rhs,
        spec.strides,
        spec.padding,
        rhs_dilation=spec.dilation,
        dimension_numbers=numbers,
        precision=spec.precision,
    )
    return jnp.transpose(out, (2, 0, 1, 3))  # (Ho, Wo, N, O) -> NHWC
