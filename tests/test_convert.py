"""torch <-> flax weight conversion: lossless round trips, layouts, rules, and every error path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as fnn

torch = pytest.importorskip("torch")

from funcmod import convert as convert_mod  # noqa: E402
from funcmod.articles import EXAMPLES, models  # noqa: E402
from funcmod.convert import (  # noqa: E402
    ConversionError,
    LeafRule,
    LoadResult,
    flax_to_torch,
    register_rule,
    torch_grads_to_flax,
    torch_to_flax,
)
from funcmod.layout import to_channels_last  # noqa: E402
from funcmod.parity import check_parity  # noqa: E402
from funcmod.tree import assert_trees_close, leaves_with_paths  # noqa: E402
from tests.helpers import x64  # noqa: E402

NAMES = list(EXAMPLES)
IMAGE_SIZE = 6

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _randomise(module, seed):
    """Overwrite every parameter and buffer with fresh normal draws (so no two seeds agree)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype))
    return module


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_state_equal(module, snapshot):
    state = module.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert state[k].dtype == v.dtype, k
        assert torch.equal(state[k], v), k


def _mlp(seed=0):
    torch.manual_seed(seed)
    return _randomise(EXAMPLES["MLP"].torch_module(), seed)


# --- round trips ----------------------------------------------------------------------------------


def _round_trip(name, dtype_name):
    ex = EXAMPLES[name]
    torch_dtype = TORCH_DTYPES[dtype_name]
    with x64(dtype_name):
        src = _randomise(ex.torch_module(torch_dtype), seed=1)
        variables = torch_to_flax(src)
        leaves = jax.tree_util.tree_leaves(variables)
        assert all(leaf.dtype == jnp.dtype(dtype_name) for leaf in leaves)
        dst = _randomise(ex.torch_module(torch_dtype), seed=2)
        for k, v in dst.state_dict().items():  # the target really starts out different
            assert not torch.equal(v, src.state_dict()[k]), k
        result = flax_to_torch(variables, dst)
    assert result == LoadResult([], [])
    _assert_state_equal(dst, _snapshot(src))


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bitwise_lossless(name, dtype_name):
    _round_trip(name, dtype_name)


def test_round_trip_bfloat16():
    _round_trip("MLP", "bfloat16")


# --- layouts --------------------------------------------------------------------------------------


def test_linear_weight_becomes_transposed_kernel():
    lin = _randomise(torch.nn.Linear(3, 7), 0)
    v = torch_to_flax(lin)["params"]
    assert v["kernel"].shape == (3, 7)  # (in, out)
    np.testing.assert_array_equal(v["kernel"], lin.weight.detach().numpy().T)
    np.testing.assert_array_equal(v["bias"], lin.bias.detach().numpy())


def test_conv2d_weight_becomes_hwio_kernel():
    conv = _randomise(torch.nn.Conv2d(3, 5, kernel_size=(2, 4)), 0)  # weight (O=5, I=3, 2, 4)
    v = torch_to_flax(conv)["params"]
    assert v["kernel"].shape == (2, 4, 3, 5)  # (kh, kw, I, O)
    w = conv.weight.detach().numpy()
    for o in range(5):
        for i in range(3):
            np.testing.assert_array_equal(v["kernel"][:, :, i, o], w[o, i])


@pytest.mark.parametrize("name", NAMES)
def test_converted_variables_match_flax_template(name):
    ex = EXAMPLES[name]
    xs = ex.make_inputs(np.random.default_rng(0), 2, image_size=IMAGE_SIZE)
    xs = [to_channels_last(a, lay) for a, lay in zip(xs, ex.input_layouts, strict=True)]
    template = jax.eval_shape(ex.flax_module().init, jax.random.key(0), *xs)
    variables = torch_to_flax(ex.torch_module(), template=template)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(template)
    for path, leaf in leaves_with_paths(template).items():
        got = leaves_with_paths(variables)[path]
        assert (got.shape, got.dtype) == (leaf.shape, leaf.dtype), path


def test_wrong_template_lists_every_key():
    template = jax.eval_shape(models.MLP(10, 6, 2).init, jax.random.key(0), jnp.zeros((1, 10)))
    with pytest.raises(ConversionError) as info:
        torch_to_flax(_mlp(), template=template)
    err = info.value
    keys = sorted(m[0] for m in err.mismatched)
    assert keys == ["params/linear1/bias", "params/linear1/kernel", "params/linear2/kernel"]
    msg = str(err)
    assert "Flax template" in msg
    assert "params/linear1/kernel: expected shape (10, 6) float32, got shape (10, 5) float32" in msg
    assert "params/linear1/bias: expected shape (6,) float32, got shape (5,) float32" in msg
    assert "params/linear2/kernel: expected shape (6, 2) float32, got shape (5, 2) float32" in msg
    assert err.missing == [] and err.unexpected == []


def test_template_of_another_model_lists_missing_and_unexpected():
    template = jax.eval_shape(
        models.SimpleLinear(10, 5).init, jax.random.key(0), jnp.zeros((1, 10))
    )
    with pytest.raises(ConversionError) as info:
        torch_to_flax(_mlp(), template=template)
    err = info.value
    assert sorted(err.missing) == ["params/linear/bias", "params/linear/kernel"]
    assert sorted(err.unexpected) == [
        "params/linear1/bias",
        "params/linear1/kernel",
        "params/linear2/bias",
        "params/linear2/kernel",
    ]
    for key in err.missing + err.unexpected:
        assert key in str(err)


def test_template_dtype_mismatch():
    with jax.enable_x64(True):
        template = jax.eval_shape(
            models.MLP(10, 5, 2, param_dtype=jnp.float64).init,
            jax.random.key(0),
            jnp.zeros((1, 10), jnp.float64),
        )
    with pytest.raises(ConversionError) as info:
        torch_to_flax(_mlp(), template=template)
    assert len(info.value.mismatched) == 4
    assert "params/linear2/bias: expected shape (2,) float64, got shape (2,) float32" in str(
        info.value
    )


# --- flax_to_torch error paths --------------------------------------------------------------------


def _mlp_vars(seed=3):
    return torch_to_flax(_mlp(seed))


def _drop(variables, *paths):
    flat = dict(leaves_with_paths(variables))
    out = {}
    for path, leaf in flat.items():
        if path in paths:
            continue
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def test_missing_key():
    module = _mlp()
    before = _snapshot(module)
    with pytest.raises(ConversionError) as info:
        flax_to_torch(_drop(_mlp_vars(), "params/linear2/bias"), module)
    err = info.value
    assert err.missing == ["params/linear2/bias"]
    assert err.unexpected == [] and err.mismatched == []
    assert "missing keys (1):\n    params/linear2/bias" in str(err)
    _assert_state_equal(module, before)


def test_unexpected_key():
    module = _mlp()
    before = _snapshot(module)
    variables = _mlp_vars()
    variables["params"]["linear3"] = {"kernel": jnp.zeros((2, 2))}
    variables["batch_stats"] = {"linear1": {"mean": jnp.zeros(5)}}
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    err = info.value
    assert sorted(err.unexpected) == ["batch_stats/linear1/mean", "params/linear3/kernel"]
    assert err.missing == [] and err.mismatched == []
    for key in err.unexpected:
        assert key in str(err)
    _assert_state_equal(module, before)


def test_several_shape_mismatches_in_one_error():
    module = _mlp()
    before = _snapshot(module)
    variables = _mlp_vars()
    # linear1 given in torch's (out, in) layout instead of Flax's (in, out), linear2 bias too long
    variables["params"]["linear1"]["kernel"] = variables["params"]["linear1"]["kernel"].T
    variables["params"]["linear2"]["bias"] = jnp.zeros(3)
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    err = info.value
    assert len(err.mismatched) == 2
    by_key = {k.split(" ")[0]: (e, g) for k, e, g in err.mismatched}
    assert by_key == {
        "params/linear1/kernel": ("shape (10, 5) float32", "shape (5, 10) float32"),
        "params/linear2/bias": ("shape (2,) float32", "shape (3,) float32"),
    }
    msg = str(err)
    assert "mismatched leaves (2)" in msg
    assert (
        "params/linear1/kernel (torch 'linear1.weight'): "
        "expected shape (10, 5) float32, got shape (5, 10) float32" in msg
    )
    assert (
        "params/linear2/bias (torch 'linear2.bias'): "
        "expected shape (2,) float32, got shape (3,) float32" in msg
    )
    _assert_state_equal(module, before)  # linear1/bias and linear2/kernel fit, but none written


def test_missing_unexpected_and_mismatched_together():
    module = _mlp()
    before = _snapshot(module)
    variables = _drop(_mlp_vars(), "params/linear1/bias", "params/linear2/kernel")
    variables["params"]["extra"] = jnp.zeros(1)
    variables["params"]["linear2"]["bias"] = jnp.zeros((2, 1))
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    err = info.value
    assert err.missing == ["params/linear1/bias", "params/linear2/kernel"]
    assert err.unexpected == ["params/extra"]
    assert [m[0] for m in err.mismatched] == ["params/linear2/bias (torch 'linear2.bias')"]
    _assert_state_equal(module, before)


def test_dtype_mismatch():
    module = _mlp()
    before = _snapshot(module)
    variables = _mlp_vars()
    variables["params"]["linear1"]["bias"] = np.zeros(5, np.float64)  # numpy: no x64 needed
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module)
    assert (
        "params/linear1/bias (torch 'linear1.bias'): "
        "expected shape (5,) float32, got shape (5,) float64" in str(info.value)
    )
    _assert_state_equal(module, before)


def test_float64_module_without_x64():
    assert not jax.config.jax_enable_x64
    module = _mlp().double()
    with pytest.raises(ConversionError) as info:
        torch_to_flax(module)
    msg = str(info.value)
    assert "float64" in msg
    assert "enable_x64" in msg
    assert "params/linear1/" in msg


def test_failed_load_leaves_module_unchanged():
    module = _mlp(0)
    before = _snapshot(module)
    variables = _mlp_vars(7)  # every leaf differs from the module's
    variables["params"]["linear2"]["kernel"] = jnp.zeros((5, 3))
    with pytest.raises(ConversionError, match="params/linear2/kernel"):
        flax_to_torch(variables, module)
    _assert_state_equal(module, before)


def test_non_strict_loads_what_fits():
    module = _mlp(0)
    before = _snapshot(module)
    src = _mlp(7)
    variables = _drop(torch_to_flax(src), "params/linear2/kernel", "params/linear2/bias")
    variables["params"]["head"] = {"kernel": jnp.zeros((2, 2))}
    result = flax_to_torch(variables, module, strict=False)
    assert isinstance(result, LoadResult)
    assert result.missing_keys == ["params/linear2/kernel", "params/linear2/bias"]
    assert result.unexpected_keys == ["params/head/kernel"]
    state = module.state_dict()
    for k in ("linear1.weight", "linear1.bias"):
        assert torch.equal(state[k], src.state_dict()[k]), k
    for k in ("linear2.weight", "linear2.bias"):
        assert torch.equal(state[k], before[k]), k


def test_non_strict_still_rejects_mismatched_shapes():
    module = _mlp(0)
    before = _snapshot(module)
    variables = _drop(_mlp_vars(), "params/linear2/bias")
    variables["params"]["linear1"]["bias"] = jnp.zeros(4)
    with pytest.raises(ConversionError) as info:
        flax_to_torch(variables, module, strict=False)
    assert info.value.missing == []  # not an error when not strict
    assert [m[0].split(" ")[0] for m in info.value.mismatched] == ["params/linear1/bias"]
    _assert_state_equal(module, before)


# --- torch_to_flax(state_dict=...) ----------------------------------------------------------------


def test_state_dict_argument_takes_tensors_from_it():
    module, other = _mlp(0), _mlp(5)
    variables = torch_to_flax(module, state_dict=other.state_dict())
    assert_trees_close(variables, torch_to_flax(other), rtol=0.0)
    with pytest.raises(AssertionError):
        assert_trees_close(variables, torch_to_flax(module), rtol=0.0)


def test_state_dict_argument_errors_all_at_once():
    module = _mlp(0)
    sd = dict(module.state_dict())
    del sd["linear2.bias"]
    sd["linear3.weight"] = torch.zeros(2, 2)
    sd["linear1.weight"] = torch.zeros(10, 5)  # Flax's layout where torch's (5, 10) is expected
    sd["linear2.weight"] = sd["linear2.weight"].double()
    with pytest.raises(ConversionError) as info:
        torch_to_flax(module, state_dict=sd)
    err = info.value
    assert err.missing == ["linear2.bias"]
    assert err.unexpected == ["linear3.weight"]
    assert sorted(err.mismatched) == [
        ("linear1.weight", "shape (5, 10) float32", "shape (10, 5) float32"),
        ("linear2.weight", "shape (2, 5) float32", "shape (2, 5) float64"),
    ]
    msg = str(err)
    assert "state_dict does not fit MLP" in msg
    for key in ("linear2.bias", "linear3.weight", "linear1.weight", "linear2.weight"):
        assert key in msg


# --- rules ----------------------------------------------------------------------------------------


def test_register_rule_rejects_non_modules():
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_rule(object, LeafRule("w", "kernel"))
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_rule(torch.nn.Linear(2, 2), LeafRule("w", "kernel"))  # an instance
    assert object not in convert_mod.RULES


class _LinearWithKernel(torch.nn.Linear):
    """A Linear that also registers a tensor called `kernel`, where the weight goes."""

    def __init__(self):
        super().__init__(2, 3)
        self.kernel = torch.nn.Parameter(torch.zeros(3))


class _ListAndAttribute(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 3)])
        self.blocks_0 = torch.nn.Linear(2, 3)  # Flax would also call blocks[0] `blocks_0`


@pytest.mark.parametrize(
    ("module_cls", "flax_key", "torch_keys"),
    [
        (_LinearWithKernel, "params/kernel", ("'weight'", "'kernel'")),
        (_ListAndAttribute, "params/blocks_0/kernel", ("'blocks.0.weight'", "'blocks_0.weight'")),
    ],
)
def test_two_tensors_on_one_flax_key(module_cls, flax_key, torch_keys):
    module = module_cls()
    for convert in (lambda: torch_to_flax(module), lambda: flax_to_torch({}, module)):
        with pytest.raises(ConversionError) as info:
            convert()
        msg = str(info.value)
        assert f"same Flax key {flax_key}" in msg
        for k in torch_keys:
            assert k in msg


class _SequentialWithLayers0(torch.nn.Sequential):
    def __init__(self):
        super().__init__(torch.nn.Linear(2, 3))  # -> params/layers_0/{kernel,bias}
        self.layers_0 = torch.nn.Parameter(torch.zeros(3))  # -> params/layers_0 (a leaf)


def test_leaf_colliding_with_a_subtree_is_a_conversion_error():
    with pytest.raises(ConversionError, match="layers_0"):
        torch_to_flax(_SequentialWithLayers0())


# --- layers beyond the examples -------------------------------------------------------------------


def _template(flax_module, *xs):
    return jax.eval_shape(flax_module.init, jax.random.key(0), *xs)


def _assert_parity(torch_module, flax_module, variables, x, **kw):
    report = check_parity(torch_module, flax_module, variables, [x], input_names=["x"], **kw)
    assert report.ok, str(report)
    assert report.rtol == 1e-5
    return report


def test_batchnorm2d():
    bn = _randomise(torch.nn.BatchNorm2d(4), 0)
    with torch.no_grad():
        bn.running_var.abs_().add_(0.5)
        bn.num_batches_tracked.fill_(11)
    bn.eval()
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    flax_bn = fnn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
    variables = torch_to_flax(bn, template=_template(flax_bn, to_channels_last(x, "NCHW")))
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"scale", "bias"}
    assert set(variables["batch_stats"]) == {"mean", "var"}  # num_batches_tracked ignored
    np.testing.assert_array_equal(variables["batch_stats"]["var"], bn.running_var.numpy())
    np.testing.assert_array_equal(variables["params"]["scale"], bn.weight.detach().numpy())
    report = _assert_parity(bn, flax_bn, variables, x, input_layouts=["NCHW"], output_layout="NCHW")
    assert {d.path for d in report.grads} == {"params/scale", "params/bias", "x"}

    fresh = torch.nn.BatchNorm2d(4)
    assert flax_to_torch(variables, fresh) == LoadResult([], [])  # strict: nothing missing
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(fresh.state_dict()[k], bn.state_dict()[k]), k
    assert int(fresh.num_batches_tracked) == 0  # not part of the conversion


def test_layernorm():
    ln = _randomise(torch.nn.LayerNorm(6), 0)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    flax_ln = fnn.LayerNorm(epsilon=1e-5)
    variables = torch_to_flax(ln, template=_template(flax_ln, x))
    assert set(variables["params"]) == {"scale", "bias"}
    _assert_parity(ln, flax_ln, variables, x)


def test_embedding():
    emb = _randomise(torch.nn.Embedding(7, 4), 0)
    idx = np.array([[0, 6, 3], [2, 2, 5]], np.int32)
    flax_emb = fnn.Embed(num_embeddings=7, features=4)
    variables = torch_to_flax(emb, template=_template(flax_emb, idx))
    assert variables["params"]["embedding"].shape == (7, 4)
    out = flax_emb.apply(variables, idx)
    expected = emb(torch.from_numpy(idx.astype(np.int64))).detach().numpy()
    assert_trees_close(out, expected, rtol=0.0)  # a lookup: exact


def test_conv1d():
    conv = _randomise(torch.nn.Conv1d(3, 5, kernel_size=3, padding=1), 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32)
    flax_conv = fnn.Conv(5, kernel_size=(3,), padding=((1, 1),))
    variables = torch_to_flax(conv, template=_template(flax_conv, to_channels_last(x, "NCL")))
    assert variables["params"]["kernel"].shape == (3, 3, 5)  # (k, in, out)
    _assert_parity(conv, flax_conv, variables, x, input_layouts=["NCL"], output_layout="NCL")


class _TorchWithBody(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
        )
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.body(x))


class _FlaxWithBody(fnn.Module):
    def setup(self):
        self.body = fnn.Sequential([fnn.Dense(8), fnn.relu, fnn.Dense(3)])
        self.head = fnn.Dense(2)

    def __call__(self, x):
        return self.head(self.body(x))


class _TorchWithBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)])

    def forward(self, x):
        return self.blocks[1](torch.relu(self.blocks[0](x)))


class _FlaxWithBlocks(fnn.Module):
    def setup(self):
        self.blocks = [fnn.Dense(4), fnn.Dense(3)]

    def __call__(self, x):
        return self.blocks[1](fnn.relu(self.blocks[0](x)))


@pytest.mark.parametrize(
    ("torch_cls", "flax_cls", "paths"),
    [
        (
            _TorchWithBody,
            _FlaxWithBody,
            {"body/layers_0", "body/layers_2", "head"},
        ),
        (_TorchWithBlocks, _FlaxWithBlocks, {"blocks_0", "blocks_1"}),
    ],
)
def test_nested_containers(torch_cls, flax_cls, paths):
    torch.manual_seed(0)
    module = torch_cls()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    flax_module = flax_cls()
    variables = torch_to_flax(module, template=_template(flax_module, x))
    leaf_paths = set(leaves_with_paths(variables["params"]))
    assert leaf_paths == {f"{p}/{leaf}" for p in paths for leaf in ("kernel", "bias")}
    _assert_parity(module, flax_module, variables, x)
    fresh = torch_cls()
    flax_to_torch(variables, fresh)
    _assert_state_equal(fresh, _snapshot(module))


# --- register_rule for a user layer ---------------------------------------------------------------


class MyDense(torch.nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(out_features, in_features))
        self.b = torch.nn.Parameter(torch.randn(out_features))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        return x @ self.w.T + self.b


class _TorchProj(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = MyDense(5, 3)

    def forward(self, x):
        return self.proj(x)


class _FlaxProj(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(3, name="proj")(x)


@pytest.fixture
def my_dense_rule():
    assert MyDense not in convert_mod.RULES
    register_rule(
        MyDense, LeafRule("w", "kernel", perm=(1, 0)), LeafRule("b", "bias"), ignored=("calls",)
    )
    try:
        yield
    finally:
        convert_mod.RULES.pop(MyDense, None)


def test_user_layer_without_rule_is_copied_as_is():
    torch.manual_seed(0)
    module = _TorchProj()
    variables = torch_to_flax(module)
    assert set(variables["params"]["proj"]) == {"w", "b"}
    assert set(variables["buffers"]["proj"]) == {"calls"}
    x = jnp.zeros((1, 5))
    with pytest.raises(ConversionError) as info:
        torch_to_flax(module, template=_template(_FlaxProj(), x))
    assert sorted(info.value.missing) == ["params/proj/bias", "params/proj/kernel"]
    assert "params/proj/w" in info.value.unexpected


def test_registered_user_layer_maps_to_dense(my_dense_rule):
    torch.manual_seed(0)
    module = _TorchProj()
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    variables = torch_to_flax(module, template=_template(_FlaxProj(), x))
    assert set(variables) == {"params"}  # the ignored buffer is not converted
    np.testing.assert_array_equal(
        variables["params"]["proj"]["kernel"], module.proj.w.detach().numpy().T
    )
    _assert_parity(module, _FlaxProj(), variables, x)
    fresh = _TorchProj()
    flax_to_torch(variables, fresh)
    assert torch.equal(fresh.proj.w, module.proj.w)
    assert torch.equal(fresh.proj.b, module.proj.b)


def test_rule_fixture_cleaned_up():
    assert MyDense not in convert_mod.RULES


# --- gradients ------------------------------------------------------------------------------------


def test_torch_grads_to_flax_layout_and_zeros():
    module = _mlp(0)
    x = torch.randn(3, 10)
    assert_trees_close(
        torch_grads_to_flax(module),
        jax.tree_util.tree_map(np.zeros_like, torch_to_flax(module)),
        rtol=0.0,
    )
    module(x).sum().backward()
    grads = torch_grads_to_flax(module)["params"]
    np.testing.assert_array_equal(grads["linear1"]["kernel"], module.linear1.weight.grad.numpy().T)
    np.testing.assert_array_equal(grads["linear2"]["bias"], module.linear2.bias.grad.numpy())


# --- the acceptance scenario ------------------------------------------------------------


class ArticleMLP(torch.nn.Module):
    """The article's MLP, written here independently of funcmod.articles.torch_models."""

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.linear1 = torch.nn.Linear(input_size, hidden_size)
        self.relu = torch.nn.ReLU()
        self.linear2 = torch.nn.Linear(hidden_size, output_size)

    def forward(self, x):
        x = self.linear1(x)
        x = self.relu(x)
        x = self.linear2(x)
        return x


def test_acceptance_independent_torch_mlp_runs_in_flax():
    torch.manual_seed(42)
    article = ArticleMLP(10, 5, 2)
    x = np.random.default_rng(42).standard_normal((8, 10)).astype(np.float32)
    port = models.MLP(input_size=10, hidden_size=5, output_size=2)
    variables = torch_to_flax(article, template=_template(port, x))
    y_flax = port.apply(variables, jnp.asarray(x))
    with torch.no_grad():
        y_torch = article(torch.from_numpy(x)).numpy()
    assert y_flax.shape == (8, 2)
    assert_trees_close(y_flax, y_torch, rtol=1e-5, what="MLP outputs")
    report = check_parity(article, port, variables, [x], input_names=["x"], name="ArticleMLP")
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_cumulative_count_round_trips_bitwise(dtype):
    """momentum=None: num_batches_tracked is state (the next update divides by it), so it
    converts both ways; with a momentum it is never read and stays out."""
    bn = torch.nn.BatchNorm1d(3, momentum=None).to(getattr(torch, np.dtype(dtype).name)).train()
    for _ in range(5):
        bn(torch.randn(4, 3, dtype=bn.weight.dtype))
    with x64(dtype):
        variables = torch_to_flax(bn)
        count = variables["batch_stats"]["num_batches_tracked"]
        assert count.dtype == jax.dtypes.canonicalize_dtype(jnp.int64) and int(count) == 5
        fresh = torch.nn.BatchNorm1d(3, momentum=None).to(bn.weight.dtype)
        assert flax_to_torch(variables, fresh) == LoadResult([], [])
    for k, v in bn.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v) and fresh.state_dict()[k].dtype == v.dtype, k
    with x64(dtype):  # a count of another integer type is refused, naming the leaf
        bad = {**variables, "batch_stats": {**variables["batch_stats"]}}
        bad["batch_stats"]["num_batches_tracked"] = np.asarray(5, np.int16)
        with pytest.raises(ConversionError, match="batch_stats/num_batches_tracked"):
            flax_to_torch(bad, fresh)
    assert "num_batches_tracked" not in torch_to_flax(torch.nn.BatchNorm1d(3))["batch_stats"]


def test_batchnorm_count_that_does_not_fit_32_bits_is_refused():
    bn = torch.nn.BatchNorm1d(3, momentum=None)
    bn.num_batches_tracked.fill_(2**40)
    with pytest.raises(ConversionError, match="num_batches_tracked"):
        torch_to_flax(bn)
