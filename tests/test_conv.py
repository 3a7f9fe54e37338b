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

from funcmod.nn import conv_lowerings
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


# The chunk bound (patches elements per chunk of ``chunked``) the branch shapes below are drawn
# for: small, so that small shapes take every branch and chunked branches run several chunks.
BRANCH_CHUNK = 4096


@pytest.fixture
def chunk_bound(monkeypatch):
    """Sets ``conv_lowerings.CHUNK_PATCHES_ELEMENTS`` (read by ``chunked`` when a function is
    traced; the rule does not look at it) for one test."""

    def set_bound(elements):
        monkeypatch.setattr(conv_lowerings, "CHUNK_PATCHES_ELEMENTS", elements)

    return set_bound


# One shape per branch of the rule (RULE_BRANCHES names them): the rule must pick that plan for
# it, and the plan must match torch; at BRANCH_CHUNK, the chunked kernel gradients run several
# chunks (patches elements per image, S * K, in the comments).
BRANCH_SHAPES = {
    "depthwise": ((2, 6, 7, 4), (3, 3, 1, 8), (2, 1), ((1, 1), (1, 1)), (1, 1), 4),
    "grouped": ((2, 6, 6, 4), (3, 3, 2, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
    "pointwise": ((2, 5, 6, 5), (1, 1, 5, 7), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    # 81 * 27 = 2187: one image per chunk, four chunks
    "few_taps": ((4, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    # outputs of 33 * 34 > FEW_TAPS_CHUNKED_MAX_SPATIAL positions
    "few_taps_large_image_small_batch": (
        (2, 33, 34, 3),
        (3, 3, 3, 5),
        (1, 1),
        ((0, 2), (1, 1)),
        (1, 1),
        1,
    ),
    "few_taps_large_image": ((5, 33, 34, 3), (3, 3, 3, 2), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "many_channels": ((1, 9, 9, 256), (3, 3, 256, 2), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "small_image": ((2, 3, 3, 9), (3, 3, 9, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    # 25 * 36 = 900: four images per chunk, two chunks
    "medium_image": ((8, 10, 10, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    # 90 * 36 = 3240
    "large_image": ((5, 10, 9, 6), (3, 2, 6, 4), (1, 1), ((1, 1), (1, 1)), (1, 2), 1),
    "large_image_small_batch": ((3, 10, 9, 6), (3, 2, 6, 4), (1, 1), ((1, 1), (1, 1)), (1, 2), 1),
    # 80 * 45 = 3600
    "large_image_strided_small_batch": (
        (2, 19, 17, 5),
        (3, 3, 5, 4),
        (2, 2),
        ((1, 1), (1, 0)),
        (1, 1),
        1,
    ),
}


def test_every_branch_of_the_rule_has_a_shape():
    assert set(BRANCH_SHAPES) == set(RULE_BRANCHES)


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "stride", "branch"),
    [
        ((32, 64, 64, 3), (7, 7, 3, 64), 2, "large_image"),  # ResNet-18's stem
        ((32, 224, 224, 3), (7, 7, 3, 64), 2, "large_image"),
        ((2, 224, 224, 3), (7, 7, 3, 64), 2, "large_image_strided_small_batch"),
        ((256, 32, 32, 3), (3, 3, 3, 16), 1, "few_taps"),  # SimpleCNN's first layer
        ((256, 64, 64, 3), (3, 3, 3, 16), 1, "few_taps_large_image"),
        ((16, 224, 224, 3), (3, 3, 3, 16), 2, "few_taps_large_image"),  # MobileNetV3's stem
        ((2, 224, 224, 3), (3, 3, 3, 16), 2, "few_taps_large_image_small_batch"),
        ((32, 16, 16, 64), (3, 3, 64, 64), 1, "large_image"),  # ResNet-18's layer1 at 64x64
        ((2, 56, 56, 64), (3, 3, 64, 64), 1, "large_image_small_batch"),  # at 224x224
        ((32, 8, 8, 128), (3, 3, 128, 128), 1, "medium_image"),  # layer2
        ((32, 4, 4, 256), (3, 3, 256, 256), 1, "many_channels"),  # layer3
    ],
)
def test_the_rule_on_real_layers(x_shape, k_shape, stride, branch):
    """Where real networks' layers land: the kernel gradient is chunked for every 3x3 and 7x7
    layer of fewer than 256 channels but on large images at a small batch, and for a few-tap
    one up to 32x32 outputs."""
    from funcmod.nn.conv_lowerings import ConvSpec
    from funcmod.nn.conv_rule import rule_branch

    pad = k_shape[0] // 2
    spec = ConvSpec((stride, stride), ((pad, pad), (pad, pad)), (1, 1), 1)
    assert rule_branch(x_shape, k_shape, spec) == branch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("branch", sorted(BRANCH_SHAPES))
def test_each_branch_of_the_rule_matches_torch(branch, dtype, chunk_bound):
    chunk_bound(BRANCH_CHUNK)  # read by chunked only: the rule does not look at it
    x_shape, k_shape, strides, pads, dilation, groups = BRANCH_SHAPES[branch]
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    k = jax.ShapeDtypeStruct(k_shape, jnp.float32)
    spec, plan = conv_plan(x, k, strides, pads, None, dilation, NHWC, groups)
    assert plan == RULE_BRANCHES[branch], (branch, plan)
    if "chunked" in plan:  # the shape runs the loop: more than one chunk
        assert conv_lowerings.chunk_splits_batch(x_shape, k_shape, spec), branch
    _check_against_torch(dtype, x_shape, k_shape, strides, pads, dilation, groups)


# Strided, dilated, unevenly padded: every lowering in every pass against torch.
GENERAL = ((2, 9, 8, 3), (3, 2, 3, 4), (2, 1), ((2, 0), (1, 1)), (1, 2), 1)
DEPTHWISE = ((2, 8, 9, 3), (3, 3, 1, 6), (2, 2), ((1, 2), (0, 1)), (2, 1), 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("case", "lowering"),
    [("general", name) for name in ("lax", "direct", "patches", "chunked")]
    + [("depthwise", name) for name in ("lax", "depthwise")],
)
def test_every_lowering_matches_torch(case, lowering, dtype, chunk_bound):
    chunk_bound(720)  # GENERAL: 40 outputs * 18 taps per image, one image per chunk
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
    valid = ("lax", "direct", "patches", "chunked")
    assert valid_lowerings((1, 4, 4, 3), (3, 3, 3, 2), spec) == valid
    assert set(LOWERINGS) == {"lax", "direct", "depthwise", "patches", "chunked"}
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
    """few_taps: the direct forward pass, the patches input gradient and the chunked kernel
    gradient, two chunks of one image at a chunk bound of 324 (12 outputs * 27 taps)."""
    kernel = (3, 3, 3, 2)
    x, k = (jnp.asarray(a) for a in _arrays(np.float64, (2, 3, 4, kernel[2]), kernel))
    return x, k, *_losses(((1, 1), (1, 1)))


def test_forward_mode_and_vmap_match_lax(chunk_bound):
    chunk_bound(324)
    with jax.enable_x64(True):
        x, k, f_lax, f_ours = _few_taps_case()
        tol = rtol("parity", np.float64)
        assert_trees_close(
            jax.jvp(f_ours, (x, k), (x, k)), jax.jvp(f_lax, (x, k), (x, k)), rtol=tol
        )
        per_image_lax = jax.vmap(lambda xi: f_lax(xi[None], k))(x)
        per_image = jax.vmap(lambda xi: f_ours(xi[None], k))(x)
        assert_trees_close(per_image, per_image_lax, rtol=tol)
        # the chunked kernel gradient's loop, batched over two kernels
        kernels = jnp.stack([k, -2.0 * k])
        grads_lax = jax.vmap(lambda kk: jax.grad(f_lax, argnums=1)(x, kk))(kernels)
        grads = jax.vmap(lambda kk: jax.grad(f_ours, argnums=1)(x, kk))(kernels)
        assert_trees_close(grads, grads_lax, rtol=tol)


@pytest.mark.slow
def test_second_order_matches_lax(chunk_bound):
    chunk_bound(324)
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


def test_chunked_kernel_gradient_holds_one_chunk_of_patches_not_the_matrix(chunk_bound):
    """The chunked kernel gradient compiles to a loop whose temporaries hold one chunk's
    patches: XLA's buffer for them is smaller than patches' by most of the (N * Ho * Wo, K)
    matrix. Without the rematerialisation in ``conv_lowerings.chunked``, reverse mode would
    keep every chunk's patches from the forward loop (the whole matrix again)."""
    x = jnp.ones((16, 32, 32, 3))  # 16 images, 1024 outputs * 27 taps each
    k = jnp.ones((3, 3, 3, 16))
    chunk_bound(2 * 1024 * 27)  # two images per chunk
    matrix_bytes = 16 * 1024 * 27 * 4

    def compiled(lowering):
        def loss(k):
            y = conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC,
                                     plan=Plan("direct", "patches", lowering))  # fmt: skip
            return jnp.sum(y * y)

        return jax.jit(jax.grad(loss)).lower(k).compile()

    patches, chunked = compiled("patches"), compiled("chunked")
    assert " while(" in chunked.as_text() and " while(" not in patches.as_text()
    temp = {
        name: c.memory_analysis().temp_size_in_bytes
        for name, c in (("patches", patches), ("chunked", chunked))
    }
    assert temp["patches"] - temp["chunked"] > matrix_bytes * 3 // 4, temp
