"""funcmod.nn's torch-named layers against torch.nn: forward and every gradient (inputs and
parameters) to parity tolerance in float32 and float64 over hypothesis-drawn constructor
arguments and shapes; ``torch_to_flax`` gives exactly the tree ``init`` gives; torch -> flax ->
torch is bitwise.

Print the largest errors per layer (the figures quoted in docs/migration.md)::

    PYTHONPATH=. .venv/bin/python tests/test_nn_layers.py
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from funcmod import nn as fnn  # noqa: E402
from funcmod.convert import flax_to_torch, torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tree import compare_trees  # noqa: E402
from tests.helpers import x64  # noqa: E402

DTYPES = [np.float32, np.float64]
# layer -> dtype name -> (largest forward error, largest gradient error) over the drawn cases
MEASURED: dict[str, dict[str, list[float]]] = {}

Case = tuple["torch.nn.Module", object, list[np.ndarray]]
CASES: dict[str, Callable[[Callable], Case]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


def _normal(*shape: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights and running statistics (variances positive), so no leaf is trivially 1/0."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                v = rng.uniform(0.5, 1.5, t.shape) if "var" in name else rng.normal(size=t.shape)
                t.copy_(torch.from_numpy(v))
    return module


# --- the cases: (torch layer, funcmod.nn layer, inputs in torch's layout) ----------------------


@case("Linear")
def _linear(draw):
    i, o, bias = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.booleans())
    lead = draw(st.sampled_from([(3,), (2, 3)]))
    return torch.nn.Linear(i, o, bias), fnn.Linear(i, o, bias), [_normal(*lead, i)]


@case("Bilinear")
def _bilinear(draw):
    a, b, o = (draw(st.integers(1, 4)) for _ in range(3))
    bias = draw(st.booleans())
    xs = [_normal(3, a), _normal(3, b, seed=8)]
    return torch.nn.Bilinear(a, b, o, bias), fnn.Bilinear(a, b, o, bias), xs


@case("Identity")
def _identity(draw):
    return torch.nn.Identity(), fnn.Identity(), [_normal(2, 3)]


@case("Flatten")
def _flatten(draw):
    start, end = draw(st.sampled_from([(1, -1), (0, 1), (1, 2), (2, 3)]))
    return torch.nn.Flatten(start, end), fnn.Flatten(start, end), [_normal(2, 3, 2, 2)]


@case("Unflatten")
def _unflatten(draw):
    sizes = draw(st.sampled_from([(2, 3), (3, 2), (6, 1), (-1, 2)]))
    return torch.nn.Unflatten(1, sizes), fnn.Unflatten(1, sizes), [_normal(2, 6, 2)]


def _conv_case(draw, n: int):
    groups = draw(st.sampled_from([1, 2]))
    depthwise = draw(st.booleans())
    cin = groups * draw(st.integers(1, 2))
    if depthwise:
        groups = cin
    cout = groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = draw(st.sampled_from(["int", "same", "valid"]))
    padding = draw(st.integers(0, 2)) if padding == "int" else padding
    if padding == "same":
        stride = 1
    bias = draw(st.booleans())
    size = 5 if n < 3 else 4
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    tcls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[n]
    fcls = {1: fnn.Conv1d, 2: fnn.Conv2d, 3: fnn.Conv3d}[n]
    return (
        tcls(cin, cout, k, padding_mode=mode, **args),
        fcls(cin, cout, k, padding_mode=mode, **args),
        [_normal(2, cin, *(size,) * n)],
    )


for _n in (1, 2, 3):
    case(f"Conv{_n}d")(lambda draw, n=_n: _conv_case(draw, n))


def _conv_transpose_case(draw, n: int):
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k, stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    padding = draw(st.integers(0, 2))
    output_padding = draw(st.integers(0, max(stride, dilation) - 1))
    bias = draw(st.booleans())
    size = 3
    if (size - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1 < 1:
        padding = 0  # torch refuses an empty output
    args = dict(
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        bias=bias,
        dilation=dilation,
    )
    tcls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
    fcls = {1: fnn.ConvTranspose1d, 2: fnn.ConvTranspose2d, 3: fnn.ConvTranspose3d}
    return (
        tcls[n](cin, cout, k, **args),
        fcls[n](cin, cout, k, **args),
        [_normal(2, cin, *(size,) * n)],
    )


for _n in (1, 2, 3):
    case(f"ConvTranspose{_n}d")(lambda draw, n=_n: _conv_transpose_case(draw, n))


def _batchnorm_case(draw, n: int):
    c = draw(st.integers(1, 3))
    affine, track = draw(st.booleans()), draw(st.booleans())
    eps = draw(st.sampled_from([1e-5, 1e-3]))
    shape = {1: draw(st.sampled_from([(4, c), (3, c, 3)])), 2: (3, c, 3, 2), 3: (2, c, 2, 3, 2)}[n]
    tcls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[n]
    fcls = {1: fnn.BatchNorm1d, 2: fnn.BatchNorm2d, 3: fnn.BatchNorm3d}[n]
    args = dict(eps=eps, affine=affine, track_running_stats=track)
    return tcls(c, **args), fcls(c, **args), [_normal(*shape)]


for _n in (1, 2, 3):
    case(f"BatchNorm{_n}d")(lambda draw, n=_n: _batchnorm_case(draw, n))


@case("LayerNorm")
def _layernorm(draw):
    shape = draw(st.sampled_from([(4,), (3, 4), (2, 3, 4)]))
    affine, bias = draw(st.booleans()), draw(st.booleans())
    args = dict(eps=draw(st.sampled_from([1e-5, 1e-2])), elementwise_affine=affine, bias=bias)
    return torch.nn.LayerNorm(shape, **args), fnn.LayerNorm(shape, **args), [_normal(2, 3, 4)]


@case("GroupNorm")
def _groupnorm(draw):
    g, affine = draw(st.integers(1, 3)), draw(st.booleans())
    c = g * draw(st.integers(1, 2))
    args = dict(eps=1e-5, affine=affine)
    return torch.nn.GroupNorm(g, c, **args), fnn.GroupNorm(g, c, **args), [_normal(2, c, 3, 2)]


@case("RMSNorm")
def _rmsnorm(draw):
    shape = draw(st.sampled_from([(4,), (3, 4)]))
    args = dict(eps=draw(st.sampled_from([None, 1e-6])), elementwise_affine=draw(st.booleans()))
    return torch.nn.RMSNorm(shape, **args), fnn.RMSNorm(shape, **args), [_normal(2, 3, 4)]


@case("InstanceNorm2d")
def _instancenorm(draw):
    c = draw(st.integers(1, 3))
    args = dict(affine=draw(st.booleans()), track_running_stats=draw(st.booleans()))
    return torch.nn.InstanceNorm2d(c, **args), fnn.InstanceNorm2d(c, **args), [_normal(2, c, 3, 4)]


def _activation_case(torch_cls, flax_cls, args_strategy):
    def build(draw):
        args = draw(args_strategy)
        return torch_cls(**args), flax_cls(**args), [3 * _normal(2, 3, 5)]

    return build


for _t, _f, _s in [
    (torch.nn.ReLU, fnn.ReLU, st.just({})),
    (torch.nn.ReLU6, fnn.ReLU6, st.just({})),
    (torch.nn.LeakyReLU, fnn.LeakyReLU, st.builds(dict, negative_slope=st.floats(0.01, 0.5))),
    (torch.nn.ELU, fnn.ELU, st.builds(dict, alpha=st.floats(0.1, 2.0))),
    (torch.nn.GELU, fnn.GELU, st.builds(dict, approximate=st.sampled_from(["none", "tanh"]))),
    (torch.nn.SiLU, fnn.SiLU, st.just({})),
    (torch.nn.Mish, fnn.Mish, st.just({})),
    (torch.nn.Hardswish, fnn.Hardswish, st.just({})),
    (torch.nn.Hardsigmoid, fnn.Hardsigmoid, st.just({})),
    (torch.nn.Sigmoid, fnn.Sigmoid, st.just({})),
    (torch.nn.Tanh, fnn.Tanh, st.just({})),
    (torch.nn.Softmax, fnn.Softmax, st.builds(dict, dim=st.sampled_from([0, 1, 2, -1]))),
    (torch.nn.LogSoftmax, fnn.LogSoftmax, st.builds(dict, dim=st.sampled_from([0, 1, 2, -1]))),
]:
    case(_t.__name__)(_activation_case(_t, _f, _s))


@case("PReLU")
def _prelu(draw):
    n = draw(st.sampled_from([1, 3]))
    return torch.nn.PReLU(n, 0.1), fnn.PReLU(n, 0.1), [_normal(2, 3, 4)]


def _pool_case(draw, n: int, kind: str):
    k = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([None, 1, 2, 3]))
    padding = draw(st.integers(0, k // 2))
    ceil_mode = draw(st.booleans())
    x = [_normal(2, 2, *(draw(st.integers(5, 7)) for _ in range(n)))]
    if kind == "max":
        d = draw(st.integers(1, 2))
        args = dict(stride=stride, padding=padding, dilation=d, ceil_mode=ceil_mode)
        tcls, fcls = (
            (torch.nn.MaxPool1d, fnn.MaxPool1d) if n == 1 else (torch.nn.MaxPool2d, fnn.MaxPool2d)
        )
    else:
        args = dict(stride=stride, padding=padding, ceil_mode=ceil_mode)
        args["count_include_pad"] = draw(st.booleans())
        tcls, fcls = (
            (torch.nn.AvgPool1d, fnn.AvgPool1d) if n == 1 else (torch.nn.AvgPool2d, fnn.AvgPool2d)
        )
    return tcls(k, **args), fcls(k, **args), x


for _n in (1, 2):
    case(f"MaxPool{_n}d")(lambda draw, n=_n: _pool_case(draw, n, "max"))
    case(f"AvgPool{_n}d")(lambda draw, n=_n: _pool_case(draw, n, "avg"))


@case("AdaptiveAvgPool1d")
def _adaptive_avg1(draw):
    out = draw(st.integers(1, 7))
    return torch.nn.AdaptiveAvgPool1d(out), fnn.AdaptiveAvgPool1d(out), [_normal(2, 2, 5)]


@case("AdaptiveAvgPool2d")
def _adaptive_avg2(draw):
    out = (draw(st.integers(1, 6)), draw(st.sampled_from([None, 1, 2, 4])))
    return torch.nn.AdaptiveAvgPool2d(out), fnn.AdaptiveAvgPool2d(out), [_normal(2, 2, 5, 6)]


@case("AdaptiveMaxPool2d")
def _adaptive_max2(draw):
    out = (draw(st.integers(1, 6)), draw(st.sampled_from([None, 1, 2, 4])))
    return torch.nn.AdaptiveMaxPool2d(out), fnn.AdaptiveMaxPool2d(out), [_normal(2, 2, 5, 6)]


@case("Upsample")
def _upsample(draw):
    mode = draw(st.sampled_from(["nearest", "bilinear", "linear"]))
    n = 1 if mode == "linear" else 2
    align = None if mode == "nearest" else draw(st.booleans())
    if draw(st.booleans()):
        args = dict(size=draw(st.sampled_from([1, 3, 7])))
    else:
        args = dict(scale_factor=draw(st.sampled_from([0.5, 1.5, 2.0, 3.0])))
    args.update(mode=mode, align_corners=align)
    return torch.nn.Upsample(**args), fnn.Upsample(**args), [_normal(2, 2, *(4, 5)[:n])]


@case("PixelShuffle")
def _pixel_shuffle(draw):
    r = draw(st.integers(1, 3))
    return torch.nn.PixelShuffle(r), fnn.PixelShuffle(r), [_normal(2, 2 * r * r, 2, 3)]


@case("Dropout")
def _dropout(draw):
    p = draw(st.sampled_from([0.0, 0.5]))  # train=False (torch .eval()): the identity
    return torch.nn.Dropout(p), fnn.Dropout(p), [_normal(2, 3)]


# --- the tests -----------------------------------------------------------------------------------


def _parity(torch_layer, flax_layer, variables, inputs: list[np.ndarray]):
    """Forward and every gradient of sum(out * cotangent), torch against the Flax layer; the
    Flax side is one jitted ``value_and_grad`` (one compile per case, where op-by-op dispatch
    compiles every primitive). Returns (forward diffs, gradient diffs) from ``compare_trees``."""
    dtype = inputs[0].dtype
    torch_layer.zero_grad(set_to_none=True)
    xs = [torch.from_numpy(a.copy()).requires_grad_(True) for a in inputs]
    out = torch_layer(*xs)
    cotangent = np.random.default_rng(3).standard_normal(tuple(out.shape)).astype(dtype)
    (out * torch.from_numpy(cotangent)).sum().backward()
    grads = {"inputs": [x.grad.numpy() for x in xs]}
    params = variables.get("params", {})
    if params:
        grads["params"] = torch_grads_to_flax(torch_layer)["params"]
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss(p, xs):
        y = flax_layer.apply({**others, "params": p}, *xs)
        return jnp.sum(y * cotangent), y

    (_, y), (g_p, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, [jnp.asarray(a) for a in inputs]
    )
    got = {"inputs": g_x, **({"params": g_p} if params else {})}
    rtol = RTOL["parity"][np.dtype(dtype)]
    return (
        compare_trees({"output": y}, {"output": out.detach().numpy()}, rtol=rtol),
        compare_trees(got, grads, rtol=rtol),
    )


def _check(name: str, torch_layer, flax_layer, inputs, dtype) -> None:
    torch_layer = _randomize(torch_layer).to(
        torch.float64 if dtype == np.float64 else torch.float32
    )
    torch_layer.eval()
    if hasattr(flax_layer, "param_dtype"):
        flax_layer = flax_layer.clone(param_dtype=dtype)
    with x64(dtype):
        forward, grads = _parity(
            torch_layer, flax_layer, torch_to_flax(torch_layer), [a.astype(dtype) for a in inputs]
        )
    worst = MEASURED.setdefault(name, {}).setdefault(np.dtype(dtype).name, [0.0, 0.0])
    worst[0] = max([worst[0]] + [d.max_rel for d in forward])
    worst[1] = max([worst[1]] + [d.max_rel for d in grads])
    bad = [d for d in forward + grads if not d.ok]
    assert not bad, f"{name} {np.dtype(dtype).name}: " + "; ".join(
        f"{d.path} max rel {d.max_rel:.2e}" for d in bad
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=4)  # every configuration compiles anew: six took 30 s more of the suite
@given(data=st.data())
def test_forward_and_gradients_match_torch(name, data):
    """Four drawn configurations per layer, each in a drawn dtype (about 1 s of compiling per
    configuration: minutes in all); the test below runs the first draw in both dtypes, and
    ``python tests/test_nn_layers.py`` six in both."""
    dtype = data.draw(st.sampled_from(DTYPES))
    torch_layer, flax_layer, inputs = CASES[name](data.draw)
    _check(name, torch_layer, flax_layer, inputs, dtype)


def measure_every_dtype(name: str) -> None:
    """Six drawn configurations of one layer, each in float32 and in float64 (MEASURED)."""

    @settings(max_examples=6, deadline=None, phases=[Phase.generate], derandomize=True)
    @given(data=st.data())
    def run(data):
        for dtype in DTYPES:
            torch_layer, flax_layer, inputs = CASES[name](data.draw)
            _check(name, torch_layer, flax_layer, inputs, dtype)

    run()


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=1)
@given(data=st.data())
def test_forward_and_gradients_match_torch_first_draw(name, data):
    """The quick form of the test above: one drawn configuration per layer, both dtypes."""
    for dtype in DTYPES:
        torch_layer, flax_layer, inputs = CASES[name](data.draw)
        _check(name, torch_layer, flax_layer, inputs, dtype)


def _shapes(tree) -> dict:
    return {k: (v.shape, v.dtype) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=2)
@given(data=st.data())
def test_converted_tree_is_init_tree_and_round_trip_is_bitwise(name, data):
    torch_layer, flax_layer, inputs = CASES[name](data.draw)
    xs = [jnp.asarray(a.astype(np.float32)) for a in inputs]
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    init = jax.eval_shape(flax_layer.init, rngs, *xs)
    converted = torch_to_flax(_randomize(torch_layer))
    assert _shapes(converted) == _shapes(init)
    before = {k: v.clone() for k, v in torch_layer.state_dict().items()}
    with torch.no_grad():
        for t in torch_layer.state_dict().values():
            t.zero_()
    flax_to_torch(converted, torch_layer)
    for key, value in torch_layer.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # not converted (docs/migration.md)
            assert torch.equal(value, before[key]), key
            assert value.dtype == before[key].dtype, key


# (spatial axes, kernel, stride, padding, dilation, ceil_mode): ResNet's stem pool, overlapping
# and dilated windows, a ceil_mode window overhanging the padding, 1-d.
MAX_POOL_WINDOWS = [
    (2, 3, 2, 1, 1, False),
    (2, 3, 1, 1, 1, True),
    (2, 2, None, 0, 2, True),
    (1, 3, 2, 1, 2, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", MAX_POOL_WINDOWS, ids=str)
def test_max_pool_routes_each_gradient_to_the_element_torch_picks(window, dtype):
    """Ties (a ReLU's zeros), NaN and all -inf windows: the values and the gradient equal
    torch's bitwise (integer cotangents, so overlapping windows' sums are exact whatever their
    order). Each window's gradient goes to the first element equal to its maximum, or to the
    last NaN; before the custom derivative, dilated windows split ties and NaN windows lost
    their gradient."""
    n, k, s, p, d, ceil = window
    rng = np.random.default_rng(2)  # a seed whose NaNs fall in a window of every case
    x = np.maximum(rng.integers(-3, 3, (2, 3) + (7,) * n), 0).astype(dtype)
    x.flat[rng.choice(x.size, 8, replace=False)] = [np.nan] * 5 + [-np.inf] * 3
    x[0, 0, :5] = -np.inf  # windows whose real elements are all -inf
    pool = torch.nn.functional.max_pool1d if n == 1 else torch.nn.functional.max_pool2d
    tx = torch.from_numpy(x).requires_grad_()
    ty = pool(tx, k, s, p, d, ceil)
    cotangent = rng.integers(-4, 5, ty.shape).astype(dtype)
    ty.backward(torch.from_numpy(cotangent))

    def values_and_grad(x, cotangent):
        y, vjp = jax.vjp(lambda x: fnn.functional.max_pool(x, k, s, p, d, ceil, n), x)
        return y, vjp(cotangent)[0]

    with x64(dtype):
        y, grad = jax.jit(values_and_grad)(jnp.asarray(x), jnp.asarray(cotangent))
        assert y.dtype == grad.dtype == dtype
    expected_y = ty.detach().numpy()
    assert np.isnan(expected_y).any() and np.isneginf(expected_y).any()
    assert np.count_nonzero(tx.grad.numpy()) > 0
    np.testing.assert_array_equal(np.asarray(y), expected_y)
    np.testing.assert_array_equal(np.asarray(grad), tx.grad.numpy())


if __name__ == "__main__":
    import sys

    failed = []
    for name in sys.argv[1:] or sorted(CASES):  # layer names, or every layer
        try:
            measure_every_dtype(name)
        except Exception as e:
            failed.append(f"{name}: {e}")
            print(failed[-1], flush=True)
    print("| layer | float32 forward | float32 gradients | float64 forward | float64 gradients |")
    print("|---|---|---|---|---|")
    for name, by_dtype in sorted(MEASURED.items()):
        f32, f64 = by_dtype.get("float32", [0.0] * 2), by_dtype.get("float64", [0.0] * 2)
        print(f"| {name} | {f32[0]:.1e} | {f32[1]:.1e} | {f64[0]:.1e} | {f64[1]:.1e} |")
    print("\n".join(failed) or "all layers within 1e-5 (float32) and 1e-12 (float64)")
