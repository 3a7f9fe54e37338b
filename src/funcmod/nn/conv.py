"""``conv_general_dilated``: ``lax.conv_general_dilated`` with its CPU lowering chosen by shape.

On CPU, XLA's convolution kernel is fast for wide images with moderate channels and slow
elsewhere: with many channels on a small image (a 3x3, 512 -> 512 convolution on 2x2 runs
tens of times slower than the same product as one matmul), for depthwise and strided
convolutions, and for the gradients of strided ones. So, for a 2-D convolution in Flax's layouts
(NHWC input, HWIO kernel) with an undilated input, this function computes the forward pass,
the input gradient and the kernel gradient each with the formulation that
``funcmod.nn.conv_rule.choose_plan`` picks from the shapes at trace time, among those of
``funcmod.nn.conv_lowerings``: ``'lax'`` (XLA's kernel), ``'direct'`` (a fused sum of few
taps), ``'depthwise'`` (a fused sum over the window for groups == channels), ``'patches'``
(im2col and one matmul) and ``'chunked'`` (im2col and a matmul per chunk of images, in a
loop). The rule, and the measurements it comes from, are in ``funcmod.nn.conv_rule``.

How the three choices are made independent: the function has a custom JVP. Its primal output
is the forward lowering; its tangent is ``conv(dx, k) + conv(x, dk)``, the first term computed
by the input-gradient lowering and the second by the kernel-gradient lowering, each a linear
function that JAX transposes in reverse mode: ``patches(dx, k)`` transposes into
``dy @ k^T`` followed by col2im (a fused sum of padded slices), ``patches(x, dk)`` into
``patches(x)^T @ dy``, ``chunked(x, dk)`` into a loop adding up each chunk's
``patches^T @ dy``, ``lax_conv`` into XLA's gradient convolutions. Forward mode, higher
derivatives and ``vmap`` work as for ``lax.conv_general_dilated``; a tangent that is a
symbolic zero (the input, when only the parameters are differentiated) costs nothing.

Where the rule's measurements do not hold (another CPU), ``plan_source`` lets a function pick
each convolution's plan while a function is traced; ``funcmod.nn.conv_tune.tuned_plans`` is
such a source, measuring each convolution's passes on this machine.

Only CPU changes: ``lax.platform_dependent`` lowers ``lax.conv_general_dilated`` unchanged on
every other backend (GPU, TPU). Any other configuration (not 2-D NHWC / HWIO, an input
dilation as in transposed convolutions, ``batch_group_count``, ``preferred_element_type``,
mixed dtypes, negative padding) calls ``lax.conv_general_dilated`` unchanged.

Each formulation sums in its own order, so the results differ from lax's and PyTorch's by
float reassociation only: ``tests/test_conv.py`` holds every branch of the rule to 1e-5
(float32) and 1e-12 (float64) relative error against torch, forward and both gradients.

Pass it to Flax as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``;
``funcmod.nn.layers.torch_like_conv2d`` and ``funcmod.nn.convolution`` do.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from funcmod.nn.conv_lowerings import (
    NHWC,
    ConvSpec,
    chunked,
    depthwise,
    depthwise_input_tangent,
    direct,
    kernel_tangent_lax,
    lax_conv,
    output_size,
    patches,
)
from funcmod.nn.conv_rule import LOWERINGS, MAX_DIRECT_TAPS, Plan, check_plan, choose_plan

__all__ = [
    "LOWERINGS",
    "MAX_DIRECT_TAPS",
    "Plan",
    "PlanSource",
    "conv_general_dilated",
    "conv_plan",
    "plan_source",
]

_FORWARD = {
    "lax": lax_conv,
    "direct": direct,
    "depthwise": depthwise,
    "patches": patches,
    "chunked": chunked,
}
_INPUT_TANGENT = {**_FORWARD, "depthwise": depthwise_input_tangent}
_KERNEL_TANGENT = {
    "lax": kernel_tangent_lax,
    "direct": direct,
    "depthwise": depthwise,
    "patches": patches,
    "chunked": chunked,
}


def _on_cpu(fn: Any, a: jax.Array, b: jax.Array, spec: ConvSpec) -> jax.Array:
    """``fn(a, b, spec)`` on CPU, ``lax_conv(a, b, spec)`` on every other backend."""
    return lax.platform_dependent(
        a, b, cpu=lambda a, b: fn(a, b, spec), default=lambda a, b: lax_conv(a, b, spec)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, spec: ConvSpec, plan: Plan) -> jax.Array:
    return _on_cpu(_FORWARD[plan.forward], x, kernel, spec)


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(
    spec: ConvSpec, plan: Plan, primals: tuple[Any, Any], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
    x, kernel = primals
    dx, dkernel = tangents
    y = _conv(x, kernel, spec, plan)
    # The convolution is bilinear: d conv(x, k) = conv(dx, k) + conv(x, dk), each term linear in
    # its tangent and computed by the lowering the plan gives its transpose (the gradient).
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_on_cpu(_INPUT_TANGENT[plan.input_grad], dx, kernel, spec))
    if not isinstance(dkernel, SymbolicZero):
        kernel_fn = _KERNEL_TANGENT[plan.kernel_grad]
        if plan.kernel_grad == "lax" and spec.groups != 1:
            kernel_fn = lax_conv  # the layout trick is written for groups=1
        terms.append(_on_cpu(kernel_fn, x, dkernel, spec))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _explicit_padding(
    padding: str | Sequence[tuple[int, int]],
    spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The padding as ((top, bottom), (left, right)), or None when it is not that (or negative)."""
    if isinstance(padding, str):
        effective = [d * (k - 1) + 1 for d, k in zip(dilation, window, strict=True)]
        pads = lax.padtype_to_pads(tuple(spatial), tuple(effective), tuple(strides), padding)
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        return None
    return (pads[0], pads[1])  # type: ignore[return-value]


def conv_plan(
    lhs: Any,
    rhs: Any,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> tuple[ConvSpec, Plan] | None:
    """What ``conv_general_dilated`` does with these arguments on CPU: ``(spec, plan)``, or None
    when it calls ``lax.conv_general_dilated`` unchanged. ``lhs`` and ``rhs`` need only
    ``shape`` and ``dtype`` (arrays or ``jax.ShapeDtypeStruct``)."""
    if len(lhs.shape) != 4 or len(rhs.shape) != 4 or dimension_numbers is None:
        return None  # lax's default dimension numbers are NCHW / OIHW, not Flax's layout
    if preferred_element_type is not None or lhs.dtype != rhs.dtype:
        return None
    if not jnp.issubdtype(lhs.dtype, jnp.floating) or batch_group_count != 1:
        return None
    expected = lax.conv_dimension_numbers(tuple(lhs.shape), tuple(rhs.shape), NHWC)
    given = lax.conv_dimension_numbers(tuple(lhs.shape), tuple(rhs.shape), dimension_numbers)
    ones = (1, 1)
    if given != expected or tuple(lhs_dilation or ones) != ones:
        return None
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or ones))
    kh, kw, cg, out = rhs.shape
    groups = int(feature_group_count)
    if lhs.shape[3] != cg * groups or out % groups:
        return None  # let lax raise its own error
    pads = _explicit_padding(padding, lhs.shape[1:3], (kh, kw), strides, dilation)
    if pads is None:
        return None
    sizes = [
        output_size(lhs.shape[1 + a], rhs.shape[a], strides[a], dilation[a], pads[a])
        for a in range(2)
    ]
    if min(sizes) < 1 or lhs.shape[0] < 1:
        return None
    static_precision = tuple(precision) if isinstance(precision, list) else precision
    spec = ConvSpec(strides, pads, dilation, groups, static_precision)  # type: ignore[arg-type]
    return spec, choose_plan(tuple(lhs.shape), tuple(rhs.shape), spec)


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
    *,
    plan: Plan | None = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments and result), lowered on CPU as
    ``conv_plan`` says.

    Args:
      lhs: the input, (N, H, W, C) in the layouts the rule applies to.
      rhs: the kernel, (kh, kw, C/groups, O).
      window_strides: as for ``lax.conv_general_dilated``, and so are the arguments that
        follow it up to ``plan``: ``padding``, ``lhs_dilation``, ``rhs_dilation``,
        ``dimension_numbers``, ``feature_group_count``, ``batch_group_count``, ``precision``,
        ``preferred_element_type``.
      plan: overrides the rule's choice (the benchmark times every lowering this way); it
        must be valid for the shapes (``conv_rule.valid_lowerings``), else ValueError.
        Without it, the rule's plan, or within ``plan_source`` the source's.

    Returns:
      the convolution, (N, Ho, Wo, O).
    """
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    more = (feature_group_count, batch_group_count, precision, preferred_element_type)
    chosen = conv_plan(lhs, rhs, *args, *more)
    if chosen is None:
        if plan is not None and plan != Plan("lax", "lax", "lax"):
            raise ValueError(f"plan {plan} given for a convolution that only lax computes")
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
    spec, rule_plan = chosen
    if plan is None:
        source = _PLAN_SOURCE.get()
        plan = rule_plan if source is None else source(lhs, rhs, spec, rule_plan)
    check_plan(plan, tuple(lhs.shape), tuple(rhs.shape), spec)
    return _conv(lhs, rhs, spec, plan)


PlanSource = Callable[[Any, Any, ConvSpec, Plan], Plan]
# Where a convolution given no plan takes it from, when not from the rule: a function of
# (lhs, rhs, spec, rule's plan), ``lhs`` and ``rhs`` with ``shape`` and ``dtype``.
_PLAN_SOURCE: contextvars.ContextVar[PlanSource | None] = contextvars.ContextVar(
    "funcmod_conv_plan_source", default=None
)


@contextlib.contextmanager
def plan_source(source: PlanSource) -> Iterator[None]:
    """While the context is open, a convolution that ``conv_general_dilated`` would lower by the
    rule (no ``plan`` given) takes ``source(lhs, rhs, spec, rule_plan)`` instead, checked like a
    given plan. It acts when a function is traced: a jitted function traced before the context
    keeps the plans of its trace (``funcmod.nn.conv_tune.tuned_plans`` builds on this)."""
    token = _PLAN_SOURCE.set(source)
    try:
        yield
    finally:
        _PLAN_SOURCE.reset(token)
