"""The Flax NNX ports: parity with the twins and the Linen ports, names, init, input checks."""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from funcmod import count_params  # noqa: E402
from funcmod.articles import EXAMPLES, nnx_models  # noqa: E402
from funcmod.convert import torch_to_flax  # noqa: E402
from funcmod.layout import to_channels_first, to_channels_last  # noqa: E402
from funcmod.nn import interop  # noqa: E402
from funcmod.parity import check_parity  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402

NAMES = list(EXAMPLES)
DTYPES = [np.float32, np.float64]
IMAGE_SIZE = 8  # small images keep the conv examples fast; parameters do not depend on it
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _x64(dtype):
    return jax.enable_x64(True) if dtype == np.float64 else contextlib.nullcontext()


def _inputs(ex, dtype, batch=3, seed=0):
    """The example's inputs in PyTorch's layout (NCHW for images)."""
    return ex.make_inputs(np.random.default_rng(seed), batch, dtype, image_size=IMAGE_SIZE)


def _flax_inputs(ex, xs):
    return [
        jnp.asarray(to_channels_last(a, lay)) for a, lay in zip(xs, ex.input_layouts, strict=True)
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_nnx_port_matches_torch_twin(name, dtype):
    """The twin's weights, loaded into the NNX port: forward and every gradient agree."""
    ex = EXAMPLES[name]
    torch.manual_seed(0)
    twin = ex.torch_module(TORCH_DTYPE[dtype])
    with _x64(dtype):
        model = nnx_models.from_example(ex, rngs=nnx.Rngs(1), param_dtype=dtype)
        variables = torch_to_flax(twin)
        interop.load_linen_params(model, variables.get("params", {}))
        # The weights landed where the Linen names say, bit for bit (a port without
        # parameters has none on either side: comparing two empty trees is an error).
        if ex.trainable:
            assert_trees_close(
                interop.linen_params(model), variables.get("params", {}), rtol=0.0, what=name
            )
        else:
            assert interop.linen_params(model) == {} and variables.get("params", {}) == {}
        report = check_parity(
            twin,
            interop.LinenView(model),
            variables,
            _inputs(ex, dtype),
            input_layouts=ex.input_layouts,
            output_layout=ex.output_layout,
            input_names=ex.input_names,
            name=f"{name} (NNX)",
        )
    assert report.rtol == RTOL["parity"][np.dtype(dtype)]
    assert report.ok, str(report)
    assert report.forward  # something was compared
    assert len(report.grads) == len(ex.input_names) + len(jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_nnx_port_matches_linen_port(name, dtype):
    """Linen's init, loaded into NNX: outputs, parameter and input gradients agree, with the
    NNX side differentiated by ``nnx.grad`` on the module itself."""
    ex = EXAMPLES[name]
    rtol = RTOL["parity"][np.dtype(dtype)]
    with _x64(dtype):
        xs = _flax_inputs(ex, _inputs(ex, dtype))
        linen = ex.flax_module(param_dtype=dtype)
        params = linen.init(jax.random.key(0), *xs).get("params", {})
        model = nnx_models.from_example(ex, rngs=nnx.Rngs(1), param_dtype=dtype)
        interop.load_linen_params(model, params)
        out = linen.apply({"params": params}, *xs)
        cot = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape).astype(dtype))

        def linen_loss(params, xs):
            return jnp.sum(linen.apply({"params": params}, *xs) * cot)

        def nnx_loss(model, xs):
            return jnp.sum(model(*xs) * cot)

        g_params, g_xs = jax.grad(linen_loss, argnums=(0, 1))(params, xs)
        n_state, n_xs = nnx.grad(nnx_loss, argnums=(0, 1))(model, xs)
        expected = {"output": out, "params": g_params, "inputs": g_xs}
        actual = {"output": model(*xs), "params": interop.linen_params(n_state), "inputs": n_xs}
    assert_trees_close(actual, expected, rtol=rtol, what=f"{name} NNX vs Linen")


# Counted by hand in tests/test_models.py; here they must equal the twin's and the Linen port's.
@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_twin_and_linen(name):
    ex = EXAMPLES[name]
    model = nnx_models.from_example(ex, rngs=nnx.Rngs(0))
    n_nnx = count_params(nnx.state(model, nnx.Param))
    xs = _flax_inputs(ex, _inputs(ex, np.float32, batch=1))
    n_linen = count_params(ex.flax_module().init(jax.random.key(0), *xs))
    n_twin = sum(p.numel() for p in ex.torch_module().parameters())
    assert n_nnx == n_twin == n_linen


def test_nnx_state_names_sequential_and_plain():
    seq = nnx_models.SequentialModel(10, 20, 5, rngs=nnx.Rngs(0))
    _, state = nnx.split(seq)
    shapes = jax.tree_util.tree_map(jnp.shape, nnx.to_pure_dict(state))
    # NNX keeps the list and its index; Linen flattens it to layers_0, PyTorch to 0.
    assert shapes == {
        "layers": {0: {"kernel": (10, 20), "bias": (20,)}, 2: {"kernel": (20, 5), "bias": (5,)}}
    }
    assert jax.tree_util.tree_map(jnp.shape, interop.linen_params(seq)) == {
        "layers_0": {"kernel": (10, 20), "bias": (20,)},
        "layers_2": {"kernel": (20, 5), "bias": (5,)},
    }
    twin_keys = set(EXAMPLES["SequentialModel"].torch_module().state_dict())
    assert twin_keys == {"0.weight", "0.bias", "2.weight", "2.bias"}

    mlp = nnx_models.MLP(10, 5, 2, rngs=nnx.Rngs(0))
    assert set(nnx.to_pure_dict(nnx.state(mlp))) == {"linear1", "linear2"}


def test_split_merge_round_trip_is_the_same_function():
    model = nnx_models.CustomModule(10, 20, 5, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32))
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(clone(x), model(x))
    # A pure function of the state: a changed state gives a changed model, the original stays.
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, state)
    assert not np.allclose(nnx.merge(graphdef, doubled)(x), model(x))
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), model(x))


def test_jit_matches_eager():
    model = nnx_models.SimpleCNN(3, 16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32))
    jitted = nnx.jit(lambda m, x: m(x))(model, x)
    assert_trees_close(jitted, model(x), rtol=1e-6, what="SimpleCNN nnx.jit vs eager")


# --- initialisation -----------------------------------------------------------------------------


def test_linear_and_conv_init_use_torch_bounds():
    mlp = nnx_models.MLP(64, 256, 4, rngs=nnx.Rngs(0))
    bound = 1.0 / math.sqrt(64)
    for leaf in (mlp.linear1.kernel[...], mlp.linear1.bias[...]):
        a = np.asarray(leaf)
        assert np.abs(a).max() <= bound
        assert np.abs(a).max() > 0.95 * bound  # fills the bound, not a narrower law
        assert a.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.15)  # uniform's std
    cnn = nnx_models.SimpleCNN(3, 16, rngs=nnx.Rngs(0))
    conv_bound = 1.0 / math.sqrt(3 * 3 * 3)  # in_channels * kH * kW
    assert cnn.conv.kernel[...].shape == (3, 3, 3, 16)  # (kH, kW, in, out)
    assert np.abs(np.asarray(cnn.conv.kernel[...])).max() <= conv_bound
    assert np.abs(np.asarray(cnn.conv.bias[...])).max() <= conv_bound


def test_raw_parameters_init_like_the_twins():
    lin = nnx_models.CustomLinear(32, 64, rngs=nnx.Rngs(0))
    assert lin.weight[...].shape == (64, 32)  # PyTorch's (out, in)
    assert float(np.asarray(lin.weight[...]).std()) == pytest.approx(1.0, rel=0.1)  # randn
    np.testing.assert_array_equal(lin.bias[...], np.zeros(64, np.float32))
    assert float(nnx_models.MultiplyByTwo().multiplier[...]) == 2.0


def test_param_dtype_float64():
    with jax.enable_x64(True):
        model = nnx_models.CustomModule(10, 20, 5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        dtypes = {a.dtype for a in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float64)}


# --- input checks: the same messages as the Linen ports -----------------------------------------


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("MLP", (4, 7)),
        ("CustomLinear", (4, 7)),
        ("SimpleLinear", (4, 7)),
        ("CustomModule", (4, 7)),
        ("SequentialModel", (4, 7)),
        ("SimpleCNN", (2, 3, 8, 8)),  # NCHW given to an NHWC port
        ("SimpleConvNet", (2, 8, 8, 5)),
    ],
)
def test_input_checks_match_linen(name, bad_shape):
    ex = EXAMPLES[name]
    model = nnx_models.from_example(ex, rngs=nnx.Rngs(0))
    good = _flax_inputs(ex, _inputs(ex, np.float32, batch=2))
    variables = ex.flax_module().init(jax.random.key(0), *good)
    bad = jnp.zeros(bad_shape)
    with pytest.raises(ValueError) as nnx_err:
        model(bad)
    with pytest.raises(ValueError) as linen_err:
        ex.flax_module().apply(variables, bad)
    assert str(nnx_err.value) == str(linen_err.value)
    assert str(bad_shape) in str(nnx_err.value)


def test_simple_adder_rejects_non_broadcastable():
    with pytest.raises(ValueError, match=r"x \(4, 2\), y \(4, 3\)"):
        nnx_models.SimpleAdder()(jnp.zeros((4, 2)), jnp.zeros((4, 3)))


# --- loading Linen names ------------------------------------------------------------------------


def test_load_linen_params_is_strict_and_writes_nothing_on_error():
    model = nnx_models.MLP(10, 5, 2, rngs=nnx.Rngs(0))
    before = interop.linen_params(model)
    bad = {
        "linear1": {"kernel": jnp.zeros((5, 10)), "bias": jnp.zeros((5,))},  # transposed
        "linear3": {"kernel": jnp.zeros((5, 2)), "bias": jnp.zeros((2,))},  # unknown name
    }
    with pytest.raises(ValueError) as info:
        interop.load_linen_params(model, bad)
    msg = str(info.value)
    assert "linear2/kernel" in msg and "linear2/bias" in msg  # missing
    assert "linear3/kernel" in msg  # unexpected
    assert "linear1/kernel: expected (10, 5) float32, got (5, 10) float32" in msg
    assert_trees_close(interop.linen_params(model), before, rtol=0.0, what="untouched")


def test_linen_view_output_is_nchw_comparable():
    """LinenView runs the NNX model on Linen-named variables without modifying the model."""
    ex = EXAMPLES["SimpleConvNet"]
    model = nnx_models.from_example(ex, rngs=nnx.Rngs(0))
    before = interop.linen_params(model)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, before)
    x = _flax_inputs(ex, _inputs(ex, np.float32, batch=1))[0]
    out = interop.LinenView(model).apply({"params": zeros}, x)
    assert to_channels_first(out, "NCHW").shape == (1, 16, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(out, np.zeros_like(out))  # zero weights, zero output
    assert_trees_close(interop.linen_params(model), before, rtol=0.0, what="untouched")
