"""funcmod.nn.conv: the direct CPU convolution equals lax.conv_general_dilated, in value and in
every derivative, falls back to it where it does not apply, and keeps the kernel gradient on XLA's
standard convolution inside loops."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from funcmod.articles import models
from funcmod.nn.conv import MAX_DIRECT_TAPS, conv_general_dilated, direct_applies
from funcmod.train import create_train_state, make_train_epoch, make_train_step, mse

NHWC = ("NHWC", "HWIO", "NHWC")
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
PADDINGS = [((1, 1), (1, 1)), ((0, 2), (1, 0)), "SAME", "VALID"]


def _arrays(dtype, shape=(3, 7, 9, 3), kernel=(3, 3, 3, 5), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape).astype(dtype))  # (N, H, W, C)
    k = jnp.asarray(rng.standard_normal(kernel).astype(dtype))  # (kh, kw, C, O)
    return x, k


def _close(a, b, dtype):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(float(np.max(np.abs(b))), 1e-30)
    err = float(np.max(np.abs(a - b))) / scale
    assert err <= RTOL[np.dtype(dtype)], f"max rel error {err:.2e}, shape {a.shape}"


def _losses(padding):
    def loss(conv, x, k):
        return jnp.sum(jnp.sin(conv(x, k, (1, 1), padding, dimension_numbers=NHWC)))

    return (
        lambda x, k: loss(lax.conv_general_dilated, x, k),
        lambda x, k: loss(conv_general_dilated, x, k),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
def test_value_and_gradients_match_lax(dtype, padding):
    with jax.enable_x64(dtype == np.float64):
        x, k = _arrays(dtype)
        ref = lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)
        _close(conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC), ref, dtype)
        f_lax, f_direct = _losses(padding)
        grads_lax = jax.grad(f_lax, argnums=(0, 1))(x, k)
        grads_direct = jax.jit(jax.grad(f_direct, argnums=(0, 1)))(x, k)
        for g_direct, g_lax in zip(grads_direct, grads_lax, strict=True):
            _close(g_direct, g_lax, dtype)


def test_forward_mode_second_order_and_vmap_match_lax():
    with jax.enable_x64(True):
        x, k = _arrays(np.float64, shape=(2, 5, 6, 3), kernel=(3, 3, 3, 2))
        f_lax, f_direct = _losses(((1, 1), (1, 1)))
        t_lax = jax.jvp(f_lax, (x, k), (x, k))[1]
        t_direct = jax.jvp(f_direct, (x, k), (x, k))[1]
        _close(t_direct, t_lax, np.float64)
        h_lax = jax.hessian(f_lax, argnums=1)(x, k)  # (3, 3, 3, 2, 3, 3, 3, 2)
        _close(jax.hessian(f_direct, argnums=1)(x, k), h_lax, np.float64)
        per_image_lax = jax.vmap(lambda xi: f_lax(xi[None], k))(x)
        per_image_direct = jax.vmap(lambda xi: f_direct(xi[None], k))(x)
        _close(per_image_direct, per_image_lax, np.float64)


@pytest.mark.parametrize(
    "case",
    [
        {"window_strides": (2, 2)},
        {"rhs_dilation": (2, 2)},
        {"lhs_dilation": (2, 1)},
        {"channels": 4},  # 3 * 3 * 4 = 36 taps > MAX_DIRECT_TAPS
        {"layout": "NCHW"},  # lax's default NCHW / OIHW dimension numbers
    ],
    ids=str,
)
def test_other_convolutions_are_lax_unchanged(case):
    case = dict(case)
    channels = case.pop("channels", 3)
    layout = case.pop("layout", "NHWC")
    strides = case.pop("window_strides", (1, 1))
    x, k = _arrays(np.float32, shape=(3, 7, 9, channels), kernel=(3, 3, channels, 5))
    numbers = NHWC
    if layout == "NCHW":
        x, k = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1))  # NCHW, OIHW
        numbers = None
    padding = ((1, 1), (1, 1))
    assert not direct_applies(x.shape, k.shape, strides, dimension_numbers=numbers, **case)
    expected = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=numbers, **case)
    got = conv_general_dilated(x, k, strides, padding, dimension_numbers=numbers, **case)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_direct_applies_to_the_seed_examples_convolutions():
    assert direct_applies((8, 32, 32, 3), (3, 3, 3, 16), (1, 1), dimension_numbers=NHWC)
    assert direct_applies((8, 8, 8, 1), (3, 3, 1, 16), (1, 1), dimension_numbers=NHWC)
    assert 3 * 3 * 3 <= MAX_DIRECT_TAPS < 3 * 3 * 4


@pytest.mark.parametrize("maker", ["step", "epoch"])
def test_training_step_uses_xla_standard_convolution_layout(maker):
    """The kernel gradient must be XLA's standard NHWC/HWIO convolution, also inside the
    lax.scan of make_train_epoch, where XLA:CPU otherwise keeps lax's transposed layout and
    runs a generic kernel (an order of magnitude slower)."""
    model = models.SimpleCNN(3, 16)
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
