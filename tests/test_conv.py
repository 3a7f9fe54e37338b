"""funcmod.nn.conv: every CPU lowering and every branch of the rule against torch (forward,
input gradient, kernel gradient; float32 and float64), lax unchanged where the rule does not
apply, forward mode, second order and vmap, and the kernel gradient on XLA's standard
convolution layout inside loops."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax import lax

from funcmod.nn.conv import Plan, conv_general_dilated, conv_plan
from funcmod.nn.conv_rule import LOWERINGS, RULE_BRANCHES, choose_plan, valid_lowerings
from funcmod.precision import rtol
from funcmod.train import create_train_state, make_train_epoch, make_train_step, mse
from funcmod.tree import assert_trees_close
from tests.helpers import x64

NHWC = ("NHWC", "HWIO", "NHWC")
DTYPES = [np.float32, np.float64]


def _arrays(dtype, x_shape, k_shape, seed=0):
    rng = np.random.default_rng(seed)
    draw = rng.standard_normal
    x = draw(x_shape).astype(dtype)  # (N, H, W, C)
    k = draw(k_shape).astype(dtype)  # (kh, kw, C/groups, O)
    return x, k


def _torch_conv(x, k, strides, pads, dilation, groups, ct):
    """torch's conv2d of NHWC x and HWIO k, and its VJP with cotangent ct: (y, dx, dk) in the
    same layouts."""
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_()  # NCHW
    tk = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).requires_grad_()  # OIHW
    (top, bottom), (left, right) = pads
    xp = torch.nn.functional.pad(tx, (left, right, top, bottom))  # explicit, possibly uneven
    y = torch.nn.functional.conv2d(xp, tk, stride=strides, dilation=dilation, groups=groups)
    y.backward(torch.from_numpy(np.ascontiguousarray(ct.transpose(0, 3, 1, 2))))
    return {
        "y": y.detach().numpy().transpose(0, 2, 3, 1),  # NCHW -> NHWC
        "dx": tx.grad.numpy().transpose(0, 2, 3, 1),  # NCHW -> NHWC
        "dk": tk.grad.numpy().transpose(2, 3, 1, 0),  # OIHW -> HWIO
    }


def _jax_conv(x, k, strides, pads, dilation, groups, ct, plan=None):
    conv = functools.partial(
        conv_general_dilated,
        window_strides=strides,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        plan=plan,
    )
    y, vjp = jax.vjp(jax.jit(conv), jnp.asarray(x), jnp.asarray(k))
    dx, dk = jax.jit(vjp)(jnp.asarray(ct))
    return {"y": y, "dx": dx, "dk": dk}


def _check_against_torch(dtype, x_shape, k_shape, strides, pads, dilation, groups, plan=None):
    with x64(dtype):
        x, k = _arrays(dtype, x_shape, k_shape)
        ho = (x_shape[1] + sum(pads[0]) - dilation[0] * (k_shape[0] - 1) - 1) // strides[0] + 1
        wo = (x_shape[2] + sum(pads[1]) - dilation[1] * (k_shape[1] - 1) - 1) // strides[1] + 1
        rng = np.random.default_rng(1)
        shape = (x_shape[0], ho, wo, k_shape[3])
        ct = rng.standard_normal(shape).astype(dtype)
        got = _jax_conv(x, k, strides, pads, dilation, groups, ct, plan)
        expected = _torch_conv(x, k, strides, pads, dilation, groups, ct)
        assert got["y"].dtype == np.dtype(dtype)
        assert_trees_close(got, expected, rtol=rtol("parity", dtype), what=f"plan {plan}")


# One shape per branch of the rule (RULE_BRANCHES names them): the rule must pick that plan
# for it, and the plan must match torch.
BRANCH_SHAPES = {
    "depthwise": ((2, 6, 7, 4), (3, 3, 1, 8), (2, 1), ((1, 1), (1, 1)), (1, 1), 4),
    "grouped": ((2, 6, 6, 4), (3, 3, 2, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
    "pointwise": ((2, 5, 6, 5), (1, 1, 5, 7), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    "few_taps": ((2, 7, 9, 3), (3, 3, 3, 5), (1, 1), ((0, 2), (1, 0)), (1, 1), 1),
    # 5 images, an output of 33 * 34 > FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL positions
    "few_taps_large_batch": ((5, 33, 34, 3), (3, 3, 3, 2), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "many_channels": ((1, 9, 9, 256), (3, 3, 256, 2), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "small_image": ((2, 3, 3, 9), (3, 3, 9, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "medium_image_small_batch": ((2, 12, 10, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "medium_image": ((5, 12, 10, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "large_image_small_batch": ((1, 10, 9, 6), (3, 2, 6, 4), (1, 1), ((1, 1), (1, 1)), (1, 2), 1),
    "large_image_strided_small_batch": (
        (2, 21, 19, 5),
        (3, 3, 5, 4),
        (2, 2),
        ((1, 1), (1, 0)),
        (1, 1),
        1,
    ),
    "large_image": ((5, 10, 9, 6), (3, 2, 6, 4), (1, 1), ((1, 1), (1, 1)), (1, 2), 1),
}


def test_every_branch_of_the_rule_has_a_shape():
    assert set(BRANCH_SHAPES) == set(RULE_BRANCHES)


@pytest.mark.parametrize(
    ("batch", "size", "branch"),
    [
        (32, 64, "large_image_strided_small_batch"),
        (32, 224, "large_image"),
        (2, 224, "large_image_strided_small_batch"),
    ],
)
def test_an_rgb_stem_takes_patches_for_its_kernel_gradient_while_the_matrix_is_small(
    batch, size, branch
):
    """ResNet-18's 7x7 stride-2 stem: patches for the kernel gradient at batch 32 and 64x64
    (a 4.8M-element patches matrix), lax at 224x224 (59M elements); a 64-channel layer at the
    same batch (3x3) keeps lax (``large_image``)."""
    from funcmod.nn.conv_lowerings import ConvSpec
    from funcmod.nn.conv_rule import rule_branch

    spec = ConvSpec((2, 2), ((3, 3), (3, 3)), (1, 1), 1)
    assert rule_branch((batch, size, size, 3), (7, 7, 3, 64), spec) == branch
    assert rule_branch((32, size, size, 64), (3, 3, 64, 64), spec) == "large_image"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("branch", sorted(BRANCH_SHAPES))
def test_each_branch_of_the_rule_matches_torch(branch, dtype):
    x_shape, k_shape, strides, pads, dilation, groups = BRANCH_SHAPES[branch]
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    k = jax.ShapeDtypeStruct(k_shape, jnp.float32)
    _, plan = conv_plan(x, k, strides, pads, None, dilation, NHWC, groups)
    assert plan == RULE_BRANCHES[branch], (branch, plan)
    _check_against_torch(dtype, x_shape, k_shape, strides, pads, dilation, groups)


# Strided, dilated, unevenly padded: every lowering in every pass against torch.
GENERAL = ((2, 9, 8, 3), (3, 2, 3, 4), (2, 1), ((2, 0), (1, 1)), (1, 2), 1)
DEPTHWISE = ((2, 8, 9, 3), (3, 3, 1, 6), (2, 2), ((1, 2), (0, 1)), (2, 1), 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("case", "lowering"),
    [("general", name) for name in ("lax", "direct", "patches")]
    + [("depthwise", name) for name in ("lax", "depthwise")],
)
def test_every_lowering_matches_torch(case, lowering, dtype):
    shapes = GENERAL if case == "general" else DEPTHWISE
    # the lowering in all three passes (the rule's branches mix them)
    _check_against_torch(dtype, *shapes, plan=Plan(lowering, lowering, lowering))


# The depthwise lowering's gradients are its own transposes (phase-split input gradient, one
# variadic reduction for the kernel's): strides that do not divide the input, even kernels,
# kernel dilation, padding wider than the kernel's reach, a kernel wider than the input,
# channel multipliers; as (x_shape, k_shape, strides, pads, dilation, groups).
DEPTHWISE_EDGES = {
    "stride3_k5": ((2, 11, 10, 3), (5, 5, 1, 3), (3, 3), ((2, 2), (2, 2)), (1, 1), 3),
    "even_kernel": ((1, 9, 11, 2), (4, 2, 1, 2), (2, 3), ((0, 3), (2, 0)), (1, 2), 2),
    "wide_padding": ((2, 5, 6, 2), (3, 3, 1, 4), (2, 2), ((4, 1), (3, 3)), (1, 1), 2),
    "kernel_over_input": ((2, 3, 3, 4), (5, 5, 1, 4), (1, 1), ((2, 2), (2, 2)), (1, 1), 4),
    "dilated_strided_m3": ((1, 10, 9, 2), (3, 3, 1, 6), (2, 2), ((2, 1), (2, 2)), (2, 2), 2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(DEPTHWISE_EDGES))
def test_depthwise_gradients_at_the_edges_match_torch(case, dtype):
    plan = Plan("depthwise", "depthwise", "depthwise")
    _check_against_torch(dtype, *DEPTHWISE_EDGES[case], plan=plan)


@pytest.mark.slow
def test_depthwise_forward_mode_vmap_and_second_order_match_lax():
    """The depthwise gradients are ``linear_call``s: forward mode, vmap and the Hessian in both
    operands (which differentiates their transposes again) equal lax's."""
    _, k_shape, strides, pads, dilation, groups = DEPTHWISE_EDGES["dilated_strided_m3"]
    x_shape = (1, 5, 6, 2)  # small: the Hessian has (x.size + k.size) ** 2 entries
    plan = Plan("depthwise", "depthwise", "depthwise")

    def loss(conv, x, k, **kw):
        y = conv(x, k, strides, pads, rhs_dilation=dilation, dimension_numbers=NHWC,
                 feature_group_count=groups, **kw)  # fmt: skip
        return jnp.sum(jnp.sin(y))

    f_lax = functools.partial(loss, lax.conv_general_dilated)
    f_ours = functools.partial(loss, conv_general_dilated, plan=plan)
    with jax.enable_x64(True):
        x, k = (jnp.asarray(a) for a in _arrays(np.float64, x_shape, k_shape))
        tol = rtol("parity", np.float64)

        def per_image_grad(f):
            return jax.grad(lambda xi, k: f(xi[None], k), argnums=(0, 1))

        # each transformation jitted on both sides (op by op, the three took 25 s)
        for transform in (
            lambda f: jax.jit(lambda x, k: jax.jvp(f, (x, k), (x, k))),
            lambda f: jax.jit(jax.vmap(per_image_grad(f), in_axes=(0, None))),
            lambda f: jax.jit(jax.hessian(f, argnums=(0, 1))),
        ):
            assert_trees_close(transform(f_ours)(x, k), transform(f_lax)(x, k), rtol=tol)


def test_valid_lowerings_and_bad_plans():
    spec, _ = conv_plan(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 2)), (1, 1), "SAME",
                        dimension_numbers=NHWC)  # fmt: skip
    assert valid_lowerings((1, 4, 4, 3), (3, 3, 3, 2), spec) == ("lax", "direct", "patches")
    assert set(LOWERINGS) == {"lax", "direct", "depthwise", "patches"}
    bad = Plan("depthwise", "lax", "lax")
    with pytest.raises(ValueError, match=r"\['depthwise'\] cannot compute"):
        conv_general_dilated(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 2)), (1, 1), "SAME",
                             dimension_numbers=NHWC, plan=bad)  # fmt: skip


def _losses(padding, strides=(1, 1)):
    def loss(conv, x, k):
        return jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=NHWC)))

    return (
        lambda x, k: loss(lax.conv_general_dilated, x, k),
        lambda x, k: loss(conv_general_dilated, x, k),
    )


def _few_taps_case():
    kernel = (3, 3, 3, 2)  # few_taps: direct forward, patches gradients
    x, k = (jnp.asarray(a) for a in _arrays(np.float64, (2, 3, 4, kernel[2]), kernel))
    return x, k, *_losses(((1, 1), (1, 1)))


def test_forward_mode_and_vmap_match_lax():
    with jax.enable_x64(True):
        x, k, f_lax, f_ours = _few_taps_case()
        tol = rtol("parity", np.float64)
        assert_trees_close(
            jax.jvp(f_ours, (x, k), (x, k)), jax.jvp(f_lax, (x, k), (x, k)), rtol=tol
        )
        per_image_lax = jax.vmap(lambda xi: f_lax(xi[None], k))(x)
        per_image = jax.vmap(lambda xi: f_ours(xi[None], k))(x)
        assert_trees_close(per_image, per_image_lax, rtol=tol)


@pytest.mark.slow
def test_second_order_matches_lax():
    with jax.enable_x64(True):
        x, k, f_lax, f_ours = _few_taps_case()
        h_lax = jax.hessian(f_lax, argnums=1)(x, k)  # (3, 3, 3, 2, 3, 3, 3, 2)
        assert_trees_close(jax.hessian(f_ours, argnums=1)(x, k), h_lax, rtol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        {"lhs_dilation": (2, 1)},  # a transposed convolution's
        {"layout": "NCHW"},  # lax's default NCHW / OIHW dimension numbers
        {"batch_group_count": 1, "preferred_element_type": jnp.float32},
        {"padding": ((-1, 1), (1, 1))},  # negative padding crops
    ],
    ids=str,
)
def test_other_convolutions_are_lax_unchanged(case):
    case = dict(case)
    layout = case.pop("layout", "NHWC")
    padding = case.pop("padding", ((1, 1), (1, 1)))
    x, k = (jnp.asarray(a) for a in _arrays(np.float32, (3, 7, 9, 4), (3, 3, 4, 5)))
    numbers = NHWC
    if layout == "NCHW":
        x, k = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1))  # NCHW, OIHW
        numbers = None
    args = (x, k, (1, 1), padding)
    assert conv_plan(*args, dimension_numbers=numbers, **case) is None
    expected = lax.conv_general_dilated(*args, dimension_numbers=numbers, **case)
    got = conv_general_dilated(*args, dimension_numbers=numbers, **case)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_rule_is_a_function_of_the_shapes_only():
    """Same shapes, same plan; the rule never reads values (it runs at trace time)."""
    spec, plan = conv_plan(jnp.zeros((2, 2, 2, 512)), jnp.zeros((3, 3, 512, 512)), (1, 1),
                           ((1, 1), (1, 1)), dimension_numbers=NHWC)  # fmt: skip
    assert plan == choose_plan((2, 2, 2, 512), (3, 3, 512, 512), spec)
    assert plan == Plan("patches", "patches", "patches")  # the 512 -> 512 on 2x2 case


class _Conv(nn.Module):
    plan: Plan

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(conv_general_dilated, plan=self.plan)
        return nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=conv)(x)


@pytest.mark.parametrize("maker", ["step", "epoch"])
def test_kernel_gradient_by_lax_uses_xla_standard_layout(maker):
    """A kernel gradient lowered to lax must be XLA's standard NHWC/HWIO convolution, also inside
    the lax.scan of make_train_epoch, where XLA:CPU otherwise keeps lax's transposed layout and
    runs a generic kernel (an order of magnitude slower)."""
    model = _Conv(Plan("direct", "lax", "lax"))
    x = jnp.ones((2, 8, 8, 3))  # NHWC
    y = jnp.ones((2, 8, 8, 16))
    state = create_train_state(model, model.init(jax.random.key(0), x), optax.sgd(0.1))
    if maker == "step":
        compiled = make_train_step(mse).lower(state, (x, y)).compile()
    else:
        compiled = make_train_epoch(mse).lower(state, (x[None], y[None])).compile()
    labels = re.findall(r"dim_labels=([^,\s]+)", compiled.as_text())
    assert labels, "expected the kernel gradient to be a convolution"
    assert set(labels) == {"b01f_01io->b01f"}, labels


def test_patches_plan_compiles_to_matmuls_without_convolutions():
    x = jnp.ones((2, 2, 2, 8))
    k = jnp.ones((3, 3, 8, 8))
    f = jax.grad(
        lambda x, k: jnp.sum(conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC,
                                                  plan=Plan(*["patches"] * 3))),
        argnums=(0, 1),
    )  # fmt: skip
    text = jax.jit(f).lower(x, k).compile().as_text()
    assert "convolution(" not in text and " dot(" in text
