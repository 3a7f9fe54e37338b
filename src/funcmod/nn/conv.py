"""``conv_general_dilated``: ``lax.conv_general_dilated`` with a faster CPU formulation for
convolutions with few taps, such as the seed examples' 3x3 convolutions of RGB images.

XLA:CPU runs a small-channel convolution such as ``Conv2d(3, 16, 3, padding=1)`` through a
general convolution kernel that is slower than PyTorch's oneDNN one (``funcmod bench`` measures
it). For a stride-1, undilated, ungrouped 2-D convolution in Flax's layouts (NHWC input, HWIO
kernel) with at most ``MAX_DIRECT_TAPS`` taps (``kh * kw * in_channels``), this module computes
the output directly, as a sum of shifted inputs times kernel rows::

    y[n, h, w, :] = sum over (i, j, c) of xpad[n, h + i, w + j, c] * kernel[i, j, c, :]

which XLA emits as one vectorised loop over the output (the output channels are the minor axis),
with no patches array and no layout change. Only the forward pass changes: the function has a
custom JVP whose tangent is the ordinary ``lax.conv_general_dilated``, so reverse mode
transposes it into XLA's own kernel- and input-gradient convolutions, forward mode works, and
gradients are those of ``lax.conv_general_dilated``.

The direct form is used on CPU only: ``lax.platform_dependent`` lowers the native convolution
on every other backend (GPU, TPU), where the vendor libraries are faster. Any other
configuration (strides, dilation, groups, more taps, other layouts) calls
``lax.conv_general_dilated`` unchanged.

The sum runs over the taps in (i, j, c) order, one rounding per multiply-add, so the result
differs from ``lax.conv_general_dilated`` and from PyTorch by the usual float reassociation
error (a few ulps of the output's scale; the parity tests hold it to 1e-5 in float32 and 1e-12
in float64).

Pass it to Flax as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``;
``funcmod.nn.layers.torch_like_conv2d`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["MAX_DIRECT_TAPS", "conv_general_dilated", "direct_applies"]

# The largest kh * kw * in_channels computed directly: the direct form does one broadcast
# multiply-add per tap and output element, unrolled into one fused loop, so its cost and its
# compile time grow with the taps while a convolution kernel's reuse of each input grows too.
MAX_DIRECT_TAPS = 32

_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _lax_conv(x: jax.Array, kernel: jax.Array, padding: Padding, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=_NHWC, precision=precision
    )


def _direct(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """The convolution as a sum of taps.

    Args:
      x: (N, H, W, C) input.
      kernel: (kh, kw, C, O) kernel.
      padding: ((top, bottom), (left, right)), non-negative.

    Returns:
      (N, H + top + bottom - kh + 1, W + left + right - kw + 1, O).
    """
    (top, bottom), (left, right) = padding
    kh, kw, channels, _ = kernel.shape
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))  # (N, Hp, Wp, C)
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            for c in range(channels):
                # (N, Ho, Wo, 1) * (1, 1, 1, O) -> (N, Ho, Wo, O)
                term = xp[:, i : i + ho, j : j + wo, c : c + 1] * kernel[i, j, c][None, None, None]
                y = term if y is None else y + term
    # XLA fuses this sum into each consumer (a training step's loss and its gradient both
    # recompute it) rather than writing the (N, Ho, Wo, O) output once; that is still faster
    # than XLA:CPU's convolution kernel for few taps (lax.optimization_barrier cannot stop it:
    # XLA:CPU removes barriers before fusion).
    return y


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, padding: Padding, precision: Any) -> jax.Array:
    return lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, k: _direct(x, k, padding),
        default=lambda x, k: _lax_conv(x, k, padding, precision),
    )


def _kernel_tangent(
    x: jax.Array, dkernel: jax.Array, padding: Padding, precision: Any
) -> jax.Array:
    """``lax_conv(x, dkernel)``, arranged so that its transpose (the kernel gradient) is the
    convolution XLA:CPU runs fast everywhere.

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
      (N, Ho, Wo, O), equal to ``lax_conv(x, dkernel)``.
    """
    lhs = jnp.transpose(x, (3, 1, 2, 0))  # NHWC -> CHWN
    rhs = jnp.transpose(dkernel, (2, 0, 1, 3))  # (kh, kw, C, O) -> (C, kh, kw, O)
    numbers = lax.ConvDimensionNumbers(
        lhs_spec=(3, 0, 1, 2),  # batch N is axis 3, feature C axis 0
        rhs_spec=(3, 0, 1, 2),  # out feature O is axis 3, in feature C axis 0
        out_spec=(2, 3, 0, 1),  # (Ho, Wo, N, O): batch axis 2, feature axis 3
    )
    out = lax.conv_general_dilated(
        lhs, rhs, (1, 1), padding, dimension_numbers=numbers, precision=precision
    )
    return jnp.transpose(out, (2, 0, 1, 3))  # (Ho, Wo, N, O) -> NHWC


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(
    padding: Padding, precision: Any, primals: tuple[Any, Any], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
    x, kernel = primals
    dx, dkernel = tangents
    y = _conv(x, kernel, padding, precision)
    # The convolution is bilinear: d(x * k) = dx * k + x * dk. A tangent that is a symbolic
    # zero (the input, when only the parameters are differentiated) costs nothing.
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_lax_conv(dx, kernel, padding, precision))
    if not isinstance(dkernel, SymbolicZero):
        terms.append(
            lax.platform_dependent(
                x,
                dkernel,
                cpu=lambda x, dk: _kernel_tangent(x, dk, padding, precision),
                default=lambda x, dk: _lax_conv(x, dk, padding, precision),
            )
        )
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _explicit_padding(
    padding: str | Sequence[tuple[int, int]], spatial: Sequence[int], window: Sequence[int]
) -> Padding | None:
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(tuple(spatial), tuple(window), (1, 1), padding)
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        return None
    return (pads[0], pads[1])  # type: ignore[return-value]


def direct_applies(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
) -> bool:
    """Whether ``conv_general_dilated`` computes this convolution directly on CPU: 2-D, NHWC
    input and HWIO kernel, stride 1, no dilation or groups, at most ``MAX_DIRECT_TAPS`` taps."""
    if len(lhs_shape) != 4 or len(rhs_shape) != 4:
        return False
    if dimension_numbers is None:
        return False  # lax's default is NCHW/OIHW, not Flax's layout
    expected = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), _NHWC)
    given = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
    ones = (1, 1)
    return (
        given == expected
        and tuple(window_strides) == ones
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and batch_group_count == 1
        and rhs_shape[0] * rhs_shape[1] * rhs_shape[2] <= MAX_DIRECT_TAPS
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments), computed directly on CPU when
    ``direct_applies`` says so.

    Args:
      lhs: the input, (N, H, W, C) for the direct form.
      rhs: the kernel, (kh, kw, C, O) for the direct form.
      window_strides: as for ``lax.conv_general_dilated``, and so are the arguments that
        follow it up to ``plan``: ``padding``, ``lhs_dilation``, ``rhs_dilation``,
        ``dimension_numbers``, ``feature_group_count``, ``batch_group_count``, ``precision``,
        ``preferred_element_type``.

    Returns:
      the convolution, (N, Ho, Wo, O) for the direct form.
    """
    pads = None
    if (
        preferred_element_type is None
        and lhs.dtype == rhs.dtype
        and direct_applies(
            lhs.shape,
            rhs.shape,
            window_strides,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
        )
    ):
        pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2])
    if pads is None:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    # precision is a static argument of the custom JVP: None, a string, a Precision or a pair.
    static_precision = tuple(precision) if isinstance(precision, list) else precision
    return _conv(lhs, rhs, pads, static_precision)
