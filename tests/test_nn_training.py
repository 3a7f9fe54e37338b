"""funcmod.nn in training and beyond the parity grid of test_nn_layers.py: BatchNorm's and
InstanceNorm's running statistics over several training steps (momentum 0.1 and None), Dropout,
Embedding's padding row, the functional forms (losses, pad, linear, conv2d), the initial
distributions, and torch's float32 constant in Hardsigmoid's float64 gradient."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from funcmod import nn as fnn  # noqa: E402
from funcmod.convert import torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.nn import functional as F  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402
from tests.helpers import x64  # noqa: E402

DTYPES = [np.float32, np.float64]


def _tdtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def _rtol(dtype) -> float:
    return RTOL["parity"][np.dtype(dtype)]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_steps_follow_torch(momentum, dtype):
    """Four training steps: outputs, input and parameter gradients, and the running statistics
    (unbiased variance with n = N*H*W; momentum=None: the cumulative average)."""
    rng = np.random.default_rng(0)
    twin = torch.nn.BatchNorm2d(3, momentum=momentum).to(_tdtype(dtype)).train()
    with torch.no_grad():
        twin.weight.uniform_(0.5, 1.5)
        twin.bias.normal_()
    layer = fnn.BatchNorm2d(3, momentum=momentum, param_dtype=dtype)
    with x64(dtype):
        variables = torch_to_flax(twin)
        x0 = jnp.zeros((4, 3, 3, 2), dtype)
        init = layer.init(jax.random.key(0), x0)
        if momentum is None:  # the counter converts too, in JAX's default integer type
            assert variables["batch_stats"]["num_batches_tracked"].dtype == (
                init["batch_stats"]["num_batches_tracked"].dtype
            )
        assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, init)

        def loss(params, stats, x, cot):
            y, upd = layer.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(y * cot), (y, upd["batch_stats"])

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
        for i in range(4):
            x = (2.0 * rng.standard_normal((4, 3, 3, 2)) + i).astype(dtype)
            cot = rng.standard_normal(x.shape).astype(dtype)
            tx = torch.from_numpy(x).requires_grad_(True)
            twin.zero_grad(set_to_none=True)
            ty = twin(tx)
            (ty * torch.from_numpy(cot)).sum().backward()
            (_, (y, stats)), (g_params, g_x) = step(
                variables["params"], variables["batch_stats"], x, cot
            )
            variables = {"params": variables["params"], "batch_stats": stats}
            assert_trees_close(
                {"y": y, "x": g_x, "params": g_params},
                {"y": ty.detach().numpy(), "x": tx.grad.numpy(), **torch_grads_to_flax(twin)},
                rtol=_rtol(dtype),
                what=f"step {i}",
            )
        expected = {"mean": twin.running_mean.numpy(), "var": twin.running_var.numpy()}
        got = {k: variables["batch_stats"][k] for k in expected}
        assert_trees_close(got, expected, rtol=_rtol(dtype), what="running statistics")
        if momentum is None:
            assert int(variables["batch_stats"]["num_batches_tracked"]) == 4
            assert int(twin.num_batches_tracked) == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_instancenorm_running_stats_follow_torch(dtype):
    rng = np.random.default_rng(1)
    twin = torch.nn.InstanceNorm2d(2, affine=True, track_running_stats=True).to(_tdtype(dtype))
    layer = fnn.InstanceNorm2d(2, affine=True, track_running_stats=True, param_dtype=dtype)
    with x64(dtype):
        variables = torch_to_flax(twin)
        step = jax.jit(lambda v, x: layer.apply(v, x, train=True, mutable=["batch_stats"]))
        for _ in range(3):
            x = (rng.standard_normal((3, 2, 4, 3)) + 1.0).astype(dtype)
            y, upd = step(variables, x)
            variables = {**variables, **upd}
            assert_trees_close(y, twin(torch.from_numpy(x)).detach().numpy(), rtol=_rtol(dtype))
        got = {k: variables["batch_stats"][k] for k in ("mean", "var")}
        want = {"mean": twin.running_mean.numpy(), "var": twin.running_var.numpy()}
        assert_trees_close(got, want, rtol=_rtol(dtype), what="running statistics")
        twin.eval()  # eval: normalised with the running statistics
        x = rng.standard_normal((2, 2, 4, 3)).astype(dtype)
        assert_trees_close(
            layer.apply(variables, x), twin(torch.from_numpy(x)).detach().numpy(), rtol=_rtol(dtype)
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_padding_row_gets_no_gradient(dtype):
    twin = torch.nn.Embedding(7, 4, padding_idx=2).to(_tdtype(dtype))
    layer = fnn.Embedding(7, 4, padding_idx=2, param_dtype=dtype)
    idx = np.array([[0, 2, 5], [2, 6, 0]])
    cot = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(dtype)
    out = twin(torch.from_numpy(idx))
    (out * torch.from_numpy(cot)).sum().backward()
    with x64(dtype):
        variables = torch_to_flax(twin)
        y, vjp = jax.vjp(
            lambda p: layer.apply({"params": p}, jnp.asarray(idx, jnp.int32)), variables["params"]
        )
        (grads,) = vjp(jnp.asarray(cot))
    np.testing.assert_array_equal(np.asarray(y), out.detach().numpy())
    assert_trees_close(grads, torch_grads_to_flax(twin)["params"], rtol=_rtol(dtype))
    assert not np.any(np.asarray(grads["embedding"][2]))  # the padding row
    with x64(dtype):
        table = layer.init(jax.random.key(0), jnp.asarray(idx, jnp.int32))["params"]["embedding"]
    assert not np.any(np.asarray(table[2])) and np.all(np.asarray(table[0]) != 0)


def test_dropout_keeps_one_minus_p_scaled():
    x = jnp.ones((200, 500), jnp.float32)
    layer = fnn.Dropout(0.3)
    y = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    kept = np.asarray(y) != 0
    sigma = math.sqrt(0.3 * 0.7 / x.size)
    assert abs(kept.mean() - 0.7) < 4 * sigma, kept.mean()
    np.testing.assert_array_equal(np.asarray(y)[kept], np.float32(1.0) / np.float32(0.7))
    other = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert np.any((np.asarray(other) != 0) != kept)  # another key, another mask
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x)), np.asarray(x))  # eval


def test_dropout_p0_in_training_is_torch_identity():
    x = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    twin = torch.nn.Dropout(0.0).train()
    y = fnn.Dropout(0.0).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(np.asarray(y), twin(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("reduction", "smoothing"), [("mean", 0.2), ("sum", 0.0), ("none", 0.2)])
@pytest.mark.parametrize("spatial", [False, True])
def test_cross_entropy_matches_torch(dtype, reduction, smoothing, spatial):
    rng = np.random.default_rng(4)
    shape = (4, 5, 3) if spatial else (6, 5)
    logits = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, 5, (shape[0], *shape[2:]))
    target.flat[::3] = -100  # ignored
    tl = torch.from_numpy(logits).requires_grad_(True)
    kwargs = dict(reduction=reduction, label_smoothing=smoothing)
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target), **kwargs)
    tloss.backward(torch.ones_like(tloss))
    with x64(dtype):
        t = jnp.asarray(target, jnp.int32)
        loss, vjp = jax.vjp(lambda z: F.cross_entropy(z, t, **kwargs), jnp.asarray(logits))
        (grad,) = vjp(jnp.ones_like(loss))
    assert_trees_close(
        {"loss": loss, "grad": grad},
        {"loss": tloss.detach().numpy(), "grad": tl.grad.numpy()},
        rtol=_rtol(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_loss_linear_and_conv2d_match_torch(dtype):
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal((3, 4)).astype(dtype) for _ in range(2))
    w, bias = rng.standard_normal((2, 4)).astype(dtype), rng.standard_normal(2).astype(dtype)
    x = rng.standard_normal((2, 4, 5, 5)).astype(dtype)
    k = rng.standard_normal((6, 2, 3, 3)).astype(dtype)  # torch's (out, in/groups, kh, kw)
    T = torch.nn.functional
    want = {
        "mse": T.mse_loss(torch.from_numpy(a), torch.from_numpy(b)).numpy(),
        "linear": T.linear(*map(torch.from_numpy, (a, w, bias))).numpy(),
        "conv": T.conv2d(torch.from_numpy(x), torch.from_numpy(k), None, 2, 1, 1, 2).numpy(),
    }
    with x64(dtype):
        kernel = jnp.asarray(k.transpose(2, 3, 1, 0))  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)
        got = {
            "mse": F.mse_loss(jnp.asarray(a), jnp.asarray(b)),
            "linear": F.linear(jnp.asarray(a), jnp.asarray(w.T), jnp.asarray(bias)),
            "conv": F.conv2d(jnp.asarray(x), kernel, None, 2, 1, 1, 2),
        }
    assert_trees_close(got, want, rtol=_rtol(dtype))


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_matches_torch_with_gradient(mode):
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5))
    pads = (1, 2, 2, 0) if mode != "constant" else (1, -1, 2, 3, 0, 1)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.nn.functional.pad(tx, pads, mode=mode)
    cot = np.random.default_rng(7).standard_normal(tuple(ty.shape))
    (ty * torch.from_numpy(cot)).sum().backward()
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda z: F.pad(z, pads, mode=mode), jnp.asarray(x))
        (g,) = vjp(jnp.asarray(cot))
    assert_trees_close(
        {"y": y, "g": g}, {"y": ty.detach().numpy(), "g": tx.grad.numpy()}, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("layer", "shape", "fan_in"),
    [
        (fnn.Linear(64, 512), (2, 64), 64),
        (fnn.Conv2d(16, 64, 3, groups=2), (1, 16, 5, 5), 8 * 9),
        (fnn.ConvTranspose2d(16, 64, 3, groups=2), (1, 16, 5, 5), 32 * 9),
        (fnn.Bilinear(16, 8, 32), None, 16),
    ],
    ids=["Linear", "Conv2d", "ConvTranspose2d", "Bilinear"],
)
def test_init_draws_torch_uniform_bounds(layer, shape, fan_in):
    xs = [jnp.zeros((2, 16)), jnp.zeros((2, 8))] if shape is None else [jnp.zeros(shape)]
    params = layer.init(jax.random.key(0), *xs)["params"]
    bound = 1 / math.sqrt(fan_in)
    for name, leaf in params.items():
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound, name
        if leaf.size > 1000:  # U(-b, b): std b / sqrt(3), extremes near b
            assert abs(leaf.std() / (bound / math.sqrt(3)) - 1) < 0.05, name
            assert np.abs(leaf).max() > 0.95 * bound, name


def test_hardsigmoid_float64_gradient_is_torchs_float32_sixth():
    """torch multiplies by the float32 constant 1/6 in float64 too: the exact derivative misses
    it by 3e-8 relative (far outside 1e-12); funcmod.nn reproduces torch's bit for bit."""
    x = np.linspace(-2.9, 2.9, 11)
    tx = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.hardsigmoid(tx).sum().backward()
    with jax.enable_x64(True):
        naive = jax.grad(lambda z: jnp.sum(jnp.clip(z + 3.0, 0.0, 6.0) / 6.0))(jnp.asarray(x))
        fixed = jax.grad(lambda z: jnp.sum(F.hardsigmoid(z)))(jnp.asarray(x))
    naive_err = np.abs(np.asarray(naive) - tx.grad.numpy()).max() / (1 / 6)
    assert naive_err > 1e-8
    np.testing.assert_array_equal(np.asarray(fixed), tx.grad.numpy())


def conv_transpose_trap_errors() -> tuple[float, float]:
    """ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2):
    torch's weight (4, 4, 3, 3) permuted (2, 3, 0, 1) has the shape of the right permutation
    (2, 3, 1, 0), since in == out/groups; fed to ``funcmod.nn``'s transposed convolution, only the
    right one matches. Returns (naive, fixed) max relative errors."""
    torch.manual_seed(0)
    twin = torch.nn.ConvTranspose2d(4, 8, 3, 2, 1, 1, groups=2, dilation=2)
    x = np.random.default_rng(8).standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = twin(torch.from_numpy(x)).detach().numpy()
    w, b = twin.weight.detach().numpy(), twin.bias.detach().numpy()
    layer = fnn.ConvTranspose2d(4, 8, 3, 2, 1, 1, groups=2, dilation=2)

    def run(kernel):
        return np.asarray(layer.apply({"params": {"kernel": kernel, "bias": b}}, x))

    naive = run(w.transpose(2, 3, 0, 1))  # [in, out/g, kH, kW] -> [kH, kW, in, out/g]: wrong
    fixed = run(w.transpose(2, 3, 1, 0))  # [in, out/g, kH, kW] -> [kH, kW, out/g, in]
    scale = np.abs(want).max()
    return np.abs(naive - want).max() / scale, np.abs(fixed - want).max() / scale


def test_conv_transpose_trap_naive_vs_fixed():
    naive, fixed = conv_transpose_trap_errors()
    assert naive > 0.1
    assert fixed <= RTOL["parity"][np.dtype(np.float32)]


if __name__ == "__main__":
    naive, fixed = conv_transpose_trap_errors()
    print(f"ConvTranspose2d trap: naive {naive:.2g}, fixed {fixed:.2g}")
