"""The Flax ports: parameter counts, variable trees, input checks, initialisation, jit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import funcmod  # noqa: E402
from funcmod.articles import EXAMPLES, models, torch_models  # noqa: E402
from funcmod.layout import to_channels_last  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402

NAMES = list(EXAMPLES)
IMAGE_SIZE = 8  # image examples are initialised on small images: parameters do not depend on it


def _flax_inputs(ex, batch=2, seed=0, dtype=np.float32):
    """The example's inputs in the port's layout (NHWC for images)."""
    xs = ex.make_inputs(np.random.default_rng(seed), batch, dtype, image_size=IMAGE_SIZE)
    return [
        jnp.asarray(to_channels_last(a, lay)) for a, lay in zip(xs, ex.input_layouts, strict=True)
    ]


def _init(name, seed=0):
    ex = EXAMPLES[name]
    model = ex.flax_module()
    xs = _flax_inputs(ex)
    return model, model.init(jax.random.key(seed), *xs), xs


# Counted by hand from each architecture (weights + biases), so a changed layer fails loudly.
EXPECTED_PARAM_COUNT = {
    "SimpleAdder": 0,  # no parameters
    "CustomLinear": 3 * 2 + 3,  # weight (out=3, in=2) + bias (3,) = 9
    "RiskyModule": 0,  # no parameters
    "MLP": 10 * 5 + 5 + 5 * 2 + 2,  # linear1 (10->5) + linear2 (5->2) = 67
    "SimpleCNN": 16 * 3 * 3 * 3 + 16,  # conv 3x3, 3->16 channels, + bias = 448
    "MultiplyByTwo": 1,  # one scalar multiplier
    "SimpleConvNet": 16 * 3 * 3 * 3 + 16,  # conv1 3x3, 3->16 channels, + bias = 448
    "SimpleLinear": 10 * 5 + 5,  # linear 10->5 = 55
    # linear1 10->20, weight_custom 20x20, linear2 20->5: 220 + 400 + 105 = 725
    "CustomModule": (10 * 20 + 20) + 20 * 20 + (20 * 5 + 5),
    "SequentialModel": (10 * 20 + 20) + (20 * 5 + 5),  # Linear(10,20), ReLU, Linear(20,5) = 325
}


def test_expected_counts_cover_every_example():
    assert set(EXPECTED_PARAM_COUNT) == set(EXAMPLES)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_twin_and_architecture(name):
    _, variables, _ = _init(name)
    twin = EXAMPLES[name].torch_module()
    n_twin = sum(p.numel() for p in twin.parameters())
    n_port = funcmod.count_params(variables)
    assert n_port == n_twin
    assert n_port == EXPECTED_PARAM_COUNT[name]


# Every leaf of every port's variables, with its shape.
EXPECTED_TREES = {
    "SimpleAdder": {},
    "CustomLinear": {"params": {"weight": (3, 2), "bias": (3,)}},
    "RiskyModule": {},
    "MLP": {
        "params": {
            "linear1": {"kernel": (10, 5), "bias": (5,)},
            "linear2": {"kernel": (5, 2), "bias": (2,)},
        }
    },
    "SimpleCNN": {"params": {"conv": {"kernel": (3, 3, 3, 16), "bias": (16,)}}},
    "MultiplyByTwo": {"params": {"multiplier": ()}},
    "SimpleConvNet": {"params": {"conv1": {"kernel": (3, 3, 3, 16), "bias": (16,)}}},
    "SimpleLinear": {"params": {"linear": {"kernel": (10, 5), "bias": (5,)}}},
    "CustomModule": {
        "params": {
            "linear1": {"kernel": (10, 20), "bias": (20,)},
            "weight_custom": (20, 20),
            "linear2": {"kernel": (20, 5), "bias": (5,)},
        }
    },
    "SequentialModel": {
        "params": {
            "layers_0": {"kernel": (10, 20), "bias": (20,)},
            "layers_2": {"kernel": (20, 5), "bias": (5,)},
        }
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_variable_tree_names_and_shapes(name):
    _, variables, _ = _init(name)
    shapes = jax.tree_util.tree_map(jnp.shape, variables)
    assert shapes == EXPECTED_TREES[name]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("name", ["MLP", "CustomModule", "SimpleCNN"])
def test_param_dtype_float64(name):
    ex = EXAMPLES[name]
    with jax.enable_x64(True):
        model = ex.flax_module(param_dtype=jnp.float64)
        variables = model.init(jax.random.key(0), *_flax_inputs(ex, dtype=np.float64))
        dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float64)}


# --- input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected_dim"),
    [
        ("MLP", 10),
        ("CustomLinear", 2),
        ("SimpleLinear", 10),
        ("CustomModule", 10),
        ("SequentialModel", 10),
    ],
)
def test_wrong_last_dim_names_expected_and_actual_shape(name, expected_dim):
    model, variables, _ = _init(name)
    bad = jnp.zeros((4, 7))
    with pytest.raises(ValueError) as info:
        model.apply(variables, bad)
    msg = str(info.value)
    assert name in msg
    assert f"(..., {expected_dim})" in msg
    assert "(4, 7)" in msg


def test_wrong_last_dim_also_raises_under_jit():
    model, variables, _ = _init("MLP")
    with pytest.raises(ValueError, match=r"\(\.\.\., 10\).*\(3, 7\)"):
        jax.jit(model.apply)(variables, jnp.zeros((3, 7)))


@pytest.mark.parametrize("name", ["SimpleCNN", "SimpleConvNet"])
def test_nchw_input_gets_layout_hint(name):
    model, variables, _ = _init(name)
    nchw = jnp.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError) as info:
        model.apply(variables, nchw)
    msg = str(info.value)
    assert "NHWC" in msg  # what is expected
    assert "(N, d0, d1, 3)" in msg
    assert f"(2, 3, {IMAGE_SIZE}, {IMAGE_SIZE})" in msg  # what it got
    assert "NCHW" in msg  # the hint
    assert "transpose(0, 2, 3, 1)" in msg


def test_wrong_channel_count_has_no_nchw_hint():
    model, variables, _ = _init("SimpleCNN")
    with pytest.raises(ValueError) as info:
        model.apply(variables, jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 5)))
    msg = str(info.value)
    assert f"(2, {IMAGE_SIZE}, {IMAGE_SIZE}, 5)" in msg
    assert "(N, d0, d1, 3)" in msg
    assert "NCHW" not in msg


def test_unbatched_image_is_rejected():
    model, variables, _ = _init("SimpleCNN")
    with pytest.raises(ValueError, match=r"got shape \(8, 8, 3\)"):
        model.apply(variables, jnp.zeros((8, 8, 3)))


def test_simple_adder_non_broadcastable_names_both_shapes():
    model = models.SimpleAdder()
    with pytest.raises(ValueError) as info:
        model.apply({}, jnp.zeros((4, 2)), jnp.zeros((4, 3)))
    msg = str(info.value)
    assert "x (4, 2)" in msg
    assert "y (4, 3)" in msg


def test_simple_adder_adds():
    x = jnp.arange(6.0).reshape(2, 3)
    y = jnp.full((2, 3), 0.5)
    np.testing.assert_array_equal(models.SimpleAdder().apply({}, x, y), np.asarray(x) + 0.5)


def test_risky_module_does_not_touch_its_input_and_has_identity_gradient():
    x = jnp.arange(3.0)
    y = models.RiskyModule().apply({}, x)
    np.testing.assert_array_equal(y, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x, [0.0, 1.0, 2.0])
    g = jax.grad(lambda x: jnp.sum(models.RiskyModule().apply({}, x)))(x)
    np.testing.assert_array_equal(g, np.ones(3))


# --- the article's CustomModule bug ---------------------------------------------------------------


class _ArticleCustomModule(torch.nn.Module):
    """The article's version: weight_custom registered as (hidden_dim, output_dim)."""

    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.linear1 = torch.nn.Linear(input_dim, hidden_dim)
        self.linear2 = torch.nn.Linear(hidden_dim, output_dim)
        self.register_parameter(
            "weight_custom", torch.nn.Parameter(torch.randn(hidden_dim, output_dim))
        )

    def forward(self, x):
        x = torch.relu(self.linear1(x))
        x = torch.matmul(x, self.weight_custom)  # (N, 20) @ (20, 5) -> (N, 5)
        return self.linear2(x)  # expects 20 features, gets 5


def test_article_custom_module_fails_but_twin_and_port_work():
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    article = _ArticleCustomModule(10, 20, 5)
    assert tuple(article.weight_custom.shape) == (20, 5)
    with pytest.raises(RuntimeError, match="shape"):
        article(x)

    twin = torch_models.CustomModule(10, 20, 5)
    assert tuple(twin.weight_custom.shape) == (20, 20)
    assert tuple(twin(x).shape) == (3, 5)

    port = models.CustomModule(10, 20, 5)
    xj = jnp.asarray(x.numpy())
    variables = port.init(jax.random.key(0), xj)
    assert port.apply(variables, xj).shape == (3, 5)


# --- initialisation -------------------------------------------------------------------------------


def test_mlp_init_within_torch_bounds():
    _, variables, _ = _init("MLP")
    p = variables["params"]
    for layer, fan_in in (("linear1", 10), ("linear2", 5)):
        bound = 1.0 / math.sqrt(fan_in)
        for leaf in ("kernel", "bias"):
            a = np.asarray(p[layer][leaf])
            assert np.all(np.abs(a) <= bound), (layer, leaf, np.abs(a).max(), bound)
            assert np.all(a != 0.0), (layer, leaf)  # drawn, not zeros


def test_torch_like_init_is_uniform_over_the_full_bound():
    # Wide enough that the uniform distribution's spread is visible: the draws must fill
    # [-1/sqrt(fan_in), 1/sqrt(fan_in)] (std bound/sqrt(3)), not a narrower or wider law.
    fan_in, width = 64, 256
    model = models.MLP(fan_in, width, 4)
    variables = model.init(jax.random.key(1), jnp.zeros((1, fan_in)))
    for leaf, fi in (("kernel", fan_in), ("bias", fan_in)):
        a = np.asarray(variables["params"]["linear1"][leaf])
        bound = 1.0 / math.sqrt(fi)
        assert np.abs(a).max() <= bound
        assert np.abs(a).max() > 0.95 * bound
        assert a.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.15)
    k2 = np.asarray(variables["params"]["linear2"]["kernel"])
    assert np.abs(k2).max() <= 1.0 / math.sqrt(width)


def test_conv_init_bound_uses_channels_times_window():
    _, variables, _ = _init("SimpleCNN")
    bound = 1.0 / math.sqrt(3 * 3 * 3)  # in_channels * kh * kw
    for leaf in ("kernel", "bias"):
        a = np.asarray(variables["params"]["conv"][leaf])
        assert np.abs(a).max() <= bound
    assert np.abs(np.asarray(variables["params"]["conv"]["kernel"])).max() > 0.9 * bound


def test_multiply_by_two_starts_at_two():
    _, variables, xs = _init("MultiplyByTwo")
    assert variables["params"]["multiplier"].shape == ()
    assert float(variables["params"]["multiplier"]) == 2.0
    np.testing.assert_array_equal(
        models.MultiplyByTwo().apply(variables, xs[0]), np.asarray(xs[0]) * 2.0
    )


def test_custom_linear_init_and_forward():
    model = models.CustomLinear(in_features=32, out_features=64)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32))
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["bias"], np.zeros(64, np.float32))
    w = np.asarray(variables["params"]["weight"])
    assert w.shape == (64, 32)  # PyTorch's (out, in)
    assert w.std() == pytest.approx(1.0, rel=0.1)  # N(0, 1), like torch.randn
    y = model.apply(variables, x)
    np.testing.assert_allclose(y, np.asarray(x) @ w.T, rtol=1e-5, atol=1e-5)


# --- jit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MLP", "SimpleCNN"])
def test_jit_matches_eager(name):
    model, variables, xs = _init(name)
    eager = model.apply(variables, *xs)
    jitted = jax.jit(model.apply)(variables, *xs)
    assert jitted.shape == eager.shape
    assert_trees_close(jitted, eager, rtol=1e-6, what=f"{name} jit vs eager")


def test_twin_dtype_accepts_numpy_and_torch_dtypes_and_refuses_others():
    ex = EXAMPLES["MLP"]
    assert ex.torch_module(np.float64).linear1.weight.dtype == torch.float64
    assert ex.torch_module(torch.float64).linear1.weight.dtype == torch.float64
    assert ex.torch_module().linear1.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="MLP: dtype must be float32 or float64, got int32"):
        ex.torch_module(np.int32)
