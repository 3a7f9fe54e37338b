"""Forward and gradient parity of every port against its PyTorch twin, and the parity report."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from funcmod.articles import EXAMPLES, models, torch_models  # noqa: E402
from funcmod.articles.checks import check_example  # noqa: E402
from funcmod.convert import torch_to_flax  # noqa: E402
from funcmod.parity import ParityReport, check_parity  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tree import leaves_with_paths  # noqa: E402

NAMES = list(EXAMPLES)
DTYPES = [np.float32, np.float64]


def _is_image(ex):
    return any(lay is not None for lay in ex.input_layouts)


def test_default_targets():
    assert {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12} == RTOL["parity"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4)  # every drawn shape compiles anew: 1 s per image example and draw
@given(data=st.data())
def test_parity(name, dtype, data):
    ex = EXAMPLES[name]
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    batch = data.draw(st.integers(1, 5), label="batch")
    image_size = data.draw(st.integers(4, 12), label="image_size") if _is_image(ex) else None
    report = check_example(name, dtype=dtype, batch=batch, seed=seed, image_size=image_size)
    assert report.dtype == np.dtype(dtype).name
    assert report.rtol == {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    assert report.atol == 0.0
    assert report.ok, str(report)
    out = report.forward[0]
    assert out.path == "output"
    if image_size is not None:
        assert out.shape == (batch, ex.kwargs.get("out_channels", 16), image_size, image_size)
    else:
        assert out.shape[0] == batch


@pytest.mark.parametrize("name", NAMES)
def test_report_has_a_leaf_per_parameter_and_input(name):
    ex = EXAMPLES[name]
    report = check_example(name, batch=2, image_size=4)
    torch.manual_seed(0)
    params = torch_to_flax(ex.torch_module()).get("params", {})
    expected = {f"params/{p}" for p in leaves_with_paths(params)} | set(ex.input_names)
    assert {d.path for d in report.grads} == expected
    assert [d.path for d in report.forward] == ["output"]
    for d in report.forward + report.grads:
        assert math.isfinite(d.max_abs) and d.max_abs >= 0.0
        assert math.isfinite(d.max_rel) and d.max_rel >= 0.0
    assert report.forward_max_rel == max(d.max_rel for d in report.forward)
    assert report.grad_max_abs == max(d.max_abs for d in report.grads)


def test_mlp_report_paths_and_json():
    report = check_example("MLP", batch=3)
    assert {d.path for d in report.grads} == {
        "params/linear1/kernel",
        "params/linear1/bias",
        "params/linear2/kernel",
        "params/linear2/bias",
        "x",
    }
    shapes = {d.path: d.shape for d in report.grads}
    assert shapes["params/linear1/kernel"] == (10, 5)
    assert shapes["x"] == (3, 10)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["name"] == "MLP"
    assert d["dtype"] == "float32"
    assert d["rtol"] == 1e-5
    assert d["ok"] is True
    assert [leaf["path"] for leaf in d["grads"]] == [g.path for g in report.grads]
    assert [leaf["max_rel"] for leaf in d["grads"]] == [g.max_rel for g in report.grads]
    assert d["forward"][0]["shape"] == [3, 2]
    assert "MLP [float32] PASS" in str(report)


# --- negative tests -------------------------------------------------------------------------------


def _mlp_setup(seed=0, batch=4):
    torch.manual_seed(seed)
    twin = torch_models.MLP(10, 5, 2)
    x = np.random.default_rng(seed).standard_normal((batch, 10)).astype(np.float32)
    return twin, models.MLP(10, 5, 2), torch_to_flax(twin), x


def _failing(report: ParityReport) -> set[str]:
    return {d.path for d in report.forward + report.grads if not d.ok}


def test_perturbed_leaf_fails_and_is_named():
    twin, port, variables, x = _mlp_setup()
    assert check_parity(twin, port, variables, [x], input_names=["x"]).ok  # the control
    variables["params"]["linear1"]["bias"] = variables["params"]["linear1"]["bias"] + 1e-3
    report = check_parity(twin, port, variables, [x], input_names=["x"])
    assert not report.ok
    failing = _failing(report)
    assert "output" in failing
    assert "params/linear2/kernel" in failing  # its gradient is the hidden activation
    assert "params/linear2/bias" not in failing  # its gradient is the cotangent: unchanged
    assert report.forward_max_abs > 0.0
    assert "FAIL" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_perturbed_scalar_parameter_fails():
    twin = torch_models.MultiplyByTwo()
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    variables = torch_to_flax(twin)
    variables["params"]["multiplier"] = variables["params"]["multiplier"] + 1e-3
    report = check_parity(twin, models.MultiplyByTwo(), variables, [x], input_names=["x"])
    assert _failing(report) == {"output", "x"}  # d/dx = multiplier; d/dmultiplier = sum(x * ct)


def _cnn_setup():
    # 4 channels and 4x4 images: NCHW and NHWC arrays have the same shape, so a layout mistake
    # is not caught by the shape checks and must show up in the numbers.
    torch.manual_seed(0)
    twin = torch_models.SimpleCNN(4, 4)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32)
    return twin, models.SimpleCNN(4, 4), torch_to_flax(twin), x


@pytest.mark.parametrize(
    ("input_layouts", "output_layout", "ok"),
    [
        (["NCHW"], "NCHW", True),  # correct
        (["NCHW"], None, False),  # output compared NHWC against NCHW
        ([None], "NCHW", False),  # NCHW input fed to the port as if it were NHWC
    ],
)
def test_layout_mistakes_fail(input_layouts, output_layout, ok):
    twin, port, variables, x = _cnn_setup()
    report = check_parity(
        twin,
        port,
        variables,
        [x],
        input_layouts=input_layouts,
        output_layout=output_layout,
        input_names=["x"],
    )
    assert report.ok is ok, str(report)
    if not ok:
        assert "output" in _failing(report)


def test_float64_without_x64_raises():
    assert not jax.config.jax_enable_x64
    twin, port, _, x = _mlp_setup()
    twin = twin.double()
    with jax.enable_x64(True):
        variables = torch_to_flax(twin)
    with pytest.raises(ValueError, match="enable_x64"):
        check_parity(twin, port, variables, [x.astype(np.float64)])


def test_mixed_input_dtypes_raise():
    twin = torch_models.SimpleAdder()
    x = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"all be float32 or all float64.*float32.*float64"):
        check_parity(twin, models.SimpleAdder(), {}, [x, x.astype(np.float64)])


def test_half_precision_inputs_raise():
    twin = torch_models.RiskyModule()
    with pytest.raises(ValueError, match="float16"):
        check_parity(twin, models.RiskyModule(), {}, [np.zeros((2, 2), np.float16)])


def test_variables_of_another_dtype_raise():
    twin, port, _, x = _mlp_setup()
    with jax.enable_x64(True):
        variables = torch_to_flax(twin.double())  # float64 variables, float32 inputs
    twin.float()
    with pytest.raises(ValueError, match="params/linear1/kernel"):
        check_parity(twin, port, variables, [x])


def test_input_names_of_wrong_length_raise():
    twin, port, variables, x = _mlp_setup()
    with pytest.raises(ValueError, match="1 inputs but 1 layouts and 2 names"):
        check_parity(twin, port, variables, [x], input_names=["x", "y"])


def test_check_parity_leaves_twin_untouched():
    twin, port, variables, x = _mlp_setup()
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    assert check_parity(twin, port, variables, [x]).ok
    for k, v in twin.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in twin.parameters())


def test_default_input_names():
    twin = torch_models.SimpleAdder()
    x = np.ones((2, 2), np.float32)
    report = check_parity(twin, models.SimpleAdder(), {}, [x, x])
    assert [d.path for d in report.grads] == ["x0", "x1"]
    assert report.name == "SimpleAdder"
