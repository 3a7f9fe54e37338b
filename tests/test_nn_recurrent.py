"""funcmod.nn.recurrent against torch.nn.RNN / LSTM / GRU: outputs, final states and every
gradient, float32 and float64; initial trees, lossless conversion, dropout, the bias pitfall."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as fnn  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from funcmod.convert import flax_to_torch, torch_to_flax  # noqa: E402
from funcmod.nn import recurrent  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402
from tests.helpers import x64  # noqa: E402
from tests.nn_parity import tuple_parity  # noqa: E402

KINDS = {
    "rnn_tanh": (torch.nn.RNN, recurrent.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, recurrent.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, recurrent.LSTM, {}),
    "gru": (torch.nn.GRU, recurrent.GRU, {}),
}
IN, HID, SEQ, BATCH = 3, 5, 4, 2


def _pair(kind, dtype=np.float32, **kw):
    t_cls, f_cls, extra = KINDS[kind]
    twin = t_cls(IN, HID, **extra, **kw)
    twin = twin.double() if dtype == np.float64 else twin
    return twin, f_cls(IN, HID, **extra, **kw)


def measure(kind: str, dtype, *, seed: int = 0, with_hx: bool = True, unbatched=False, **kw):
    """The max relative errors of one configuration (asserting they are within RTOL)."""
    torch.manual_seed(seed)
    twin, port = _pair(kind, dtype, **kw)
    rng = np.random.default_rng(seed)
    n_dir = 2 if kw.get("bidirectional") else 1
    x_shape = (
        (SEQ, IN)
        if unbatched
        else ((BATCH, SEQ, IN) if kw.get("batch_first") else (SEQ, BATCH, IN))
    )
    inputs = [rng.standard_normal(x_shape).astype(dtype)]
    if with_hx:
        h_shape = (n_dir * kw.get("num_layers", 1), *(() if unbatched else (BATCH,)), HID)
        inputs += [
            rng.standard_normal(h_shape).astype(dtype) for _ in range(2 if kind == "lstm" else 1)
        ]
    if kind == "lstm" and with_hx:  # LSTM takes (x, (h0, c0))
        return tuple_parity(twin, port, inputs, pack=lambda xs: (xs[0], tuple(xs[1:])))
    return tuple_parity(twin, port, inputs)


@given(
    kind=st.sampled_from(sorted(KINDS)),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    with_hx=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_recurrent_parity(kind, num_layers, bidirectional, batch_first, bias, with_hx, dtype):
    with x64(dtype):
        errors = measure(
            kind,
            dtype,
            with_hx=with_hx,
            num_layers=num_layers,
            bidirectional=bidirectional,
            batch_first=batch_first,
            bias=bias,
        )
    assert all(e >= 0 for e in errors.values())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unbatched_input(kind):
    measure(kind, np.float32, unbatched=True, bidirectional=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_converted_tree_is_the_init_tree_and_round_trip_is_bitwise(kind):
    torch.manual_seed(0)
    twin, port = _pair(kind, num_layers=2, bidirectional=True)
    converted = torch_to_flax(twin)
    init = port.init(jax.random.key(0), jnp.zeros((SEQ, BATCH, IN), jnp.float32))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), converted) == jax.tree.map(
        lambda a: (a.shape, a.dtype), init
    )
    bound = 1 / np.sqrt(HID)  # torch: every weight and bias from U(-1/sqrt(H), 1/sqrt(H))
    for leaf in jax.tree.leaves(init):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        assert float(jnp.max(jnp.abs(leaf))) > 0.5 * bound
    fresh, _ = _pair(kind, num_layers=2, bidirectional=True)
    flax_to_torch(converted, fresh)
    for (name, a), (_, b) in zip(
        twin.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_inter_layer_dropout_uses_the_dropout_rng_only_in_training():
    port = recurrent.LSTM(IN, HID, num_layers=2, dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((SEQ, BATCH, IN)), jnp.float32)
    v = port.init(jax.random.key(0), x)
    eval_out = port.apply(v, x)[0]
    a = port.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})[0]
    b = port.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})[0]
    c = port.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, eval_out) and not np.allclose(a, c)
    np.testing.assert_array_equal(eval_out, port.apply(v, x, train=False)[0])


def test_bad_arguments_are_refused_before_any_work():
    x = jnp.zeros((SEQ, BATCH, IN))
    with pytest.raises(NotImplementedError, match="proj_size"):
        recurrent.LSTM(IN, HID, proj_size=2).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="input_size=4"):
        recurrent.GRU(4, HID).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"expected \(1, 2, 5\)"):
        recurrent.GRU(IN, HID).init(jax.random.key(0), x, jnp.zeros((2, BATCH, HID)))


# --- the pitfall: biases summed, gates reordered (docs/pitfalls.md) -----------------------------


def _lstm_and_input():
    torch.manual_seed(0)
    twin = torch.nn.LSTM(IN, HID)
    x = np.random.default_rng(0).standard_normal((SEQ, BATCH, IN)).astype(np.float32)
    return twin, x, twin(torch.from_numpy(x))[0].detach().numpy()


def test_pitfall_flax_cell_layout_sums_the_biases_and_cannot_go_back():
    twin, x, want = _lstm_and_input()
    params = torch_to_flax(twin)["params"]
    cell_params = recurrent.to_flax_lstm_cell(params)
    cell = fnn.OptimizedLSTMCell(HID)
    carry = (jnp.zeros((BATCH, HID)), jnp.zeros((BATCH, HID)))
    for t in range(SEQ):
        carry, y = cell.apply({"params": cell_params}, carry, jnp.asarray(x[t]))
    assert_trees_close(np.asarray(y), want[-1], rtol=1e-5)  # the forward pass agrees ...
    summed = np.asarray(cell_params["hi"]["bias"])
    b_hh = np.asarray(params["bias_hh_l0"][:HID])
    back = summed - b_hh  # ... but b_ih cannot be recovered bitwise from b_ih + b_hh
    assert not np.array_equal(back, np.asarray(params["bias_ih_l0"][:HID]))


def test_pitfall_wrong_gate_order_is_caught():
    twin, x, want = _lstm_and_input()
    params = dict(torch_to_flax(twin)["params"])
    # TensorFlow's LSTMBlockCell order i, c(g), f, o applied to torch's i, f, g, o weights:
    swap = np.r_[0:HID, 2 * HID : 3 * HID, HID : 2 * HID, 3 * HID : 4 * HID]
    for k in ("kernel_ih_l0", "kernel_hh_l0"):
        params[k] = params[k][:, swap]
    for k in ("bias_ih_l0", "bias_hh_l0"):
        params[k] = params[k][swap]
    got = recurrent.LSTM(IN, HID).apply({"params": params}, jnp.asarray(x))[0]
    with pytest.raises(AssertionError, match="max rel"):
        assert_trees_close(np.asarray(got), want, rtol=1e-5)


def test_pitfall_gru_new_gate_bias_cannot_merge():
    torch.manual_seed(0)
    twin = torch.nn.GRU(IN, HID)
    x = np.random.default_rng(0).standard_normal((SEQ, BATCH, IN)).astype(np.float32)
    want = twin(torch.from_numpy(x))[0].detach().numpy()
    params = dict(torch_to_flax(twin)["params"])
    n = slice(2 * HID, 3 * HID)
    params["bias_ih_l0"] = params["bias_ih_l0"].at[n].add(params["bias_hh_l0"][n])  # b_in + b_hn
    params["bias_hh_l0"] = params["bias_hh_l0"].at[n].set(0.0)
    got = recurrent.GRU(IN, HID).apply({"params": params}, jnp.asarray(x))[0]
    with pytest.raises(AssertionError, match="max rel"):
        assert_trees_close(np.asarray(got), want, rtol=1e-5)
