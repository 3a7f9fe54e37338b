"""funcmod.convert's several-tensor rules and the module-level cases of its walk: GroupRule,
weight_norm, tied parameters, wrapper prefixes, meta/lazy tensors, container names, numpy
state dicts."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as fnn  # noqa: E402

from funcmod.convert import (  # noqa: E402
    ConversionError,
    GroupRule,
    flax_to_torch,
    register_rule,
    tied_parameters,
    torch_to_flax,
)


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class _Packed(torch.nn.Module):
    """A layer whose one tensor (2F, F) holds two projections."""

    def __init__(self):
        super().__init__()
        self.packed = torch.nn.Parameter(torch.randn(6, 3))


def test_register_rule_takes_a_group_rule_and_its_inverse():
    register_rule(
        _Packed,
        GroupRule(
            ("packed",),
            ("a/kernel", "b/kernel"),
            lambda w: (w[:3].T, w[3:].T),  # rows [a; b] of (2F, F) -> two (F, F) kernels
            lambda a, b: (np.concatenate([a.T, b.T]),),
        ),
    )
    torch.manual_seed(0)
    layer = _Packed()
    v = torch_to_flax(layer)
    assert _shapes(v) == {"params": {"a": {"kernel": (3, 3)}, "b": {"kernel": (3, 3)}}}
    np.testing.assert_array_equal(v["params"]["b"]["kernel"], layer.packed.detach()[3:].T)
    fresh = _Packed()
    flax_to_torch(v, fresh)
    _assert_same_state(layer, fresh)
    with pytest.raises(ConversionError, match=r"params/a/kernel .*expected shape \(3, 3\)"):
        flax_to_torch(
            {"params": {"a": {"kernel": np.zeros((3, 2), np.float32)}, "b": v["params"]["b"]}},
            fresh,
        )


@pytest.mark.parametrize(
    ("layer", "x_shape", "g_shape", "v_shape"),
    [
        (lambda: torch.nn.Linear(4, 3), (2, 4), (1, 3), (4, 3)),
        (lambda: torch.nn.Conv2d(2, 3, 3), (1, 2, 5, 5), (1, 1, 1, 3), (3, 3, 2, 3)),
    ],
)
def test_weight_norm_becomes_g_and_v_in_the_layers_layout(layer, x_shape, g_shape, v_shape):
    torch.manual_seed(0)
    wn = torch.nn.utils.parametrizations.weight_norm
    twin = wn(layer())
    p = torch_to_flax(twin)["params"]
    assert set(p) == {"g", "v", "bias"}
    assert p["g"].shape == g_shape and p["v"].shape == v_shape
    # the porter's kernel: g * v / ||v||, the norm over every axis but the last (out)
    v = np.asarray(p["v"], np.float64)
    norm = np.sqrt((v**2).sum(axis=tuple(range(v.ndim - 1)), keepdims=True))
    kernel = np.asarray(p["g"], np.float64) * v / norm
    w = twin.weight.detach().numpy()  # (out, in, *k)
    want = w.T if w.ndim == 2 else np.transpose(w, (2, 3, 1, 0))
    np.testing.assert_allclose(kernel, want, rtol=1e-6)
    fresh = wn(layer())
    flax_to_torch({"params": p}, fresh)
    _assert_same_state(twin, fresh)


class _TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(7, 4)
        self.body = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 7, bias=False)
        self.lm_head.weight = self.wte.weight  # GPT-2's tie


def test_tied_parameters_are_one_leaf_written_once():
    torch.manual_seed(0)
    twin = _TiedLM()
    assert tied_parameters(twin) == {"lm_head.weight": "wte.weight"}
    v = torch_to_flax(twin)
    assert set(v["params"]) == {"wte", "body"}  # lm_head's only tensor is wte's
    fresh = _TiedLM()
    flax_to_torch(v, fresh)
    _assert_same_state(twin, fresh)
    assert fresh.lm_head.weight is fresh.wte.weight
    # a tree that also carries the alias: accepted when it agrees, refused when it does not
    emb = np.asarray(v["params"]["wte"]["embedding"])
    agree = {"params": {**v["params"], "lm_head": {"kernel": emb.T}}}
    flax_to_torch(agree, fresh)
    differ = {"params": {**v["params"], "lm_head": {"kernel": emb.T + 1}}}
    before = fresh.wte.weight.detach().clone()
    with pytest.raises(ConversionError, match=r"tied 'lm_head.weight'.*'wte.weight'"):
        flax_to_torch(differ, fresh)
    assert torch.equal(fresh.wte.weight, before)
    # a state dict carries both keys; it converts to the one leaf
    v2 = torch_to_flax(_TiedLM(), state_dict=twin.state_dict())
    np.testing.assert_array_equal(v2["params"]["wte"]["embedding"], emb)


def test_compiled_module_and_wrapper_prefixes():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    want = torch_to_flax(mlp)
    compiled = torch.compile(mlp)
    assert _shapes(torch_to_flax(compiled)) == _shapes(want)
    for prefix in ("module.", "_orig_mod."):
        sd = {prefix + k: t for k, t in mlp.state_dict().items()}
        with pytest.warns(UserWarning, match=f"start with '{prefix}'"):
            got = torch_to_flax(mlp, state_dict=sd)
        jax.tree.map(np.testing.assert_array_equal, got, want)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    flax_to_torch(want, torch.compile(fresh))
    _assert_same_state(mlp, fresh)


def test_meta_and_lazy_tensors_are_refused_naming_each():
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ConversionError) as info:
        torch_to_flax(meta)
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert f"{k} (meta device)" in str(info.value)
    real = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    v = torch_to_flax(meta, state_dict=real.state_dict())  # values from the state dict: fine
    with pytest.raises(ConversionError, match=r"0.weight \(meta device\)"):
        flax_to_torch(v, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that lazy modules are experimental
        lazy = torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"0.weight \(uninitialised lazy\).*0.bias"):
        torch_to_flax(lazy)
    with pytest.raises(ConversionError, match="uninitialised lazy"):
        flax_to_torch(torch_to_flax(real), lazy)


class _TorchNested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = torch.nn.Sequential(
            OrderedDict(a=torch.nn.Linear(2, 2), act=torch.nn.ReLU(), b=torch.nn.Linear(2, 2))
        )
        self.blocks = torch.nn.ModuleList(
            [torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])]
        )
        self.d = torch.nn.ModuleDict(
            {"x": torch.nn.Linear(2, 2), "y": torch.nn.ModuleList([torch.nn.Linear(2, 2)])}
        )


class _FlaxNested(fnn.Module):
    def setup(self):
        self.seq = fnn.Sequential([fnn.Dense(2), fnn.relu, fnn.Dense(2)])
        self.blocks = [[fnn.Dense(2), fnn.Dense(2)]]
        self.d = {"x": fnn.Dense(2), "y": [fnn.Dense(2)]}

    def __call__(self, x):
        x = self.seq(x)
        for b in self.blocks[0]:
            x = b(x)
        return self.d["y"][0](self.d["x"](x))


def test_container_names_are_the_names_flax_gives():
    twin = _TorchNested()
    converted = torch_to_flax(twin)
    init = _FlaxNested().init(jax.random.key(0), jnp.zeros((1, 2)))
    assert _shapes(converted) == _shapes(init)
    assert set(converted["params"]) == {"seq", "blocks_0_0", "blocks_0_1", "d_x", "d_y_0"}
    assert set(converted["params"]["seq"]) == {"layers_0", "layers_2"}  # by position
    fresh = _TorchNested()
    flax_to_torch(converted, fresh)
    _assert_same_state(twin, fresh)


def test_numpy_state_dict_is_accepted():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    sd = {k: t.detach().numpy() for k, t in lin.state_dict().items()}
    got = torch_to_flax(torch.nn.Linear(3, 2), state_dict=sd)
    np.testing.assert_array_equal(got["params"]["kernel"], sd["weight"].T)
    with pytest.raises(ConversionError, match=r"weight: expected shape \(2, 3\)"):
        torch_to_flax(lin, state_dict={**sd, "weight": np.zeros((3, 3), np.float32)})
