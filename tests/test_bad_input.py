"""Bad input to the public entry points: each case raises a clear error, or computes what the
PyTorch twin computes, instead of passing vacuously or returning silently wrong numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

torch = pytest.importorskip("torch")

from funcmod.articles import EXAMPLES, models, nnx_models, torch_models  # noqa: E402
from funcmod.checkpoint import restore_checkpoint, save_checkpoint  # noqa: E402
from funcmod.convert import ConversionError, torch_to_flax  # noqa: E402
from funcmod.parity import ParityReport, check_parity  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tools import compare  # noqa: E402
from funcmod.tools.cli import main  # noqa: E402
from funcmod.train import (  # noqa: E402
    create_train_state,
    make_train_step,
    mse,
    softmax_cross_entropy,
)
from funcmod.tree import LeafDiff, assert_trees_close, compare_trees  # noqa: E402
from tests.helpers import x64  # noqa: E402

F32 = RTOL["parity"][np.dtype(np.float32)]


class TimesTwo(nn.Module):
    """A port that forgot its twin's parameter: ``x * 2.0`` against a learned multiplier."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x * 2.0


def _x(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_port_without_the_twins_parameters_is_an_error():
    twin, port, x = torch_models.MultiplyByTwo(), TimesTwo(), _x(3, 3)
    own = port.init(jax.random.key(0), x)
    for variables in ({}, own):
        with pytest.raises(ConversionError, match="params/multiplier") as e:
            check_parity(twin, port, variables, [x])
        assert e.value.unexpected == ["params/multiplier"]  # the twin has it, the port lacks it
        assert e.value.missing == []
    assert all(p.grad is None for p in twin.parameters())


def test_outputs_of_different_shapes_are_named_before_any_gradient():
    torch.manual_seed(0)
    twin, x = torch_models.MLP(10, 5, 2), _x(4, 10)
    with pytest.raises(ValueError, match=r"twin gives \(4, 2\), the port \(4, 5\)"):
        check_parity(twin, models.SimpleLinear(10, 5), torch_to_flax(twin), [x])
    assert all(p.grad is None for p in twin.parameters())


def test_variables_of_another_architecture_list_their_keys():
    torch.manual_seed(0)
    twin, x = torch_models.MLP(10, 5, 2), _x(4, 10)
    other = torch_to_flax(torch_models.SimpleLinear(10, 2))
    with pytest.raises(ConversionError, match="params/linear1/kernel") as e:
        check_parity(twin, models.MLP(10, 5, 2), other, [x])
    assert set(e.value.missing) == {
        f"params/linear{i}/{k}" for i in (1, 2) for k in ("kernel", "bias")
    }
    assert set(e.value.unexpected) == {"params/linear/kernel", "params/linear/bias"}
    # The right keys with a wrong shape name both shapes.
    wrong = torch_to_flax(torch_models.MLP(10, 6, 2))
    with pytest.raises(ConversionError, match=r"params/linear1/kernel: expected shape \(10, 5\)"):
        check_parity(twin, models.MLP(10, 5, 2), wrong, [x])


def test_comparing_nothing_is_an_error():
    with pytest.raises(ValueError, match="no leaves"):
        compare_trees({}, {"params": {}}, rtol=F32)
    with pytest.raises(ValueError, match=r"params/b: leaf of shape \(0,\) has no elements"):
        compare_trees(
            {"params": {"a": np.ones(2), "b": np.zeros(0)}},
            {"params": {"a": np.ones(2), "b": np.zeros(0)}},
            rtol=F32,
        )
    with pytest.raises(ValueError, match="0 forward and 0 gradient"):
        ParityReport("empty", "float32", F32, 0.0)
    leaf = LeafDiff("output", (2,), 0.0, 0.0, True)
    with pytest.raises(ValueError, match="1 forward and 0 gradient"):
        ParityReport("no grads", "float32", F32, 0.0, forward=[leaf])
    assert ParityReport("both", "float32", F32, 0.0, forward=[leaf], grads=[leaf]).ok


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--batch", "0"], "--batch"),
        (["--batch", "-1"], "--batch"),
        (["--seed", "-1"], "--seed"),
        (["--steps", "1", "--train-image-size", "-2"], "--train-image-size"),
    ],
)
def test_compare_rejects_bad_numbers_before_any_work(argv, flag, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("compare ran an example on bad arguments")

    monkeypatch.setattr(compare, "_compare_example", no_work)
    assert main(["compare", "MLP", *argv]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected an integer >=" in err


def test_float64_batch_with_x64_off_is_refused():
    assert not jax.config.jax_enable_x64
    model = models.MLP(10, 5, 2)
    state = create_train_state(model, model.init(jax.random.key(0), _x(1, 10)), optax.sgd(0.1))
    step = make_train_step(mse)
    x, y = _x(4, 10).astype(np.float64), _x(4, 2)
    with pytest.raises(ValueError, match=r"batch/0': 'float64'.*enable_x64\(True\)"):
        step(state, (x, y))
    state, metrics = step(state, (x.astype(np.float32), y))  # not consumed by the refusal
    assert int(state.step) == 1 and metrics["loss"].dtype == np.float32


def test_cross_entropy_labels_follow_torch():
    logits = _x(5, 3)
    t_logits = torch.from_numpy(logits)

    def ours(labels, **kw):
        return softmax_cross_entropy(jnp.asarray(logits), np.asarray(labels, np.int32), **kw)

    # ignore_index (PyTorch's -100 by default): left out of the sum and of the count; the
    # ignored rows get no gradient.
    for labels, kw in (([0, 2, -100, 1, -100], {}), ([0, 2, 0, 1, 2], {"ignore_index": 0})):
        t_in = t_logits.clone().requires_grad_(True)
        want = torch.nn.functional.cross_entropy(t_in, torch.tensor(labels), **kw)
        want.backward()
        lab = np.asarray(labels, np.int32)
        got, grad = jax.value_and_grad(softmax_cross_entropy)(jnp.asarray(logits), lab, **kw)
        assert_trees_close(
            {"loss": got, "grad": grad},
            {"loss": want.detach().numpy(), "grad": t_in.grad.numpy()},
            rtol=F32,
        )
    # Every label ignored: 0/0 in both.
    assert np.isnan(torch.nn.functional.cross_entropy(t_logits, torch.full((5,), -100)).item())
    assert np.isnan(ours([-100] * 5))
    # Out of range: PyTorch raises IndexError, so do concrete labels here.
    for bad in (-1, 3):
        labels = [0, 1, bad, 2, 0]
        with pytest.raises(IndexError):
            torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels))
        with pytest.raises(
            ValueError, match=rf"in \[0, 3\) or equal ignore_index=-100; got \[{bad}\]"
        ):
            ours(labels)
        # Under jit the values cannot be checked: the loss is NaN, not a wrong number.
        traced = jax.jit(softmax_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels, jnp.int32))
        assert np.isnan(traced)
    # optax alone reads -1 as the last class: a finite, wrong loss.
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, np.array([0, 1, -1, 2, 0]))
    last = optax.softmax_cross_entropy_with_integer_labels(logits, np.array([0, 1, 2, 2, 0]))
    assert np.isfinite(plain).all() and plain[2] == last[2]


def test_digits_cnn_names_the_image_size_it_expects():
    model = models.DigitsCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"expected 8x8 images.*\(2, 7, 7, 1\)"):
        model.apply(variables, jnp.zeros((2, 7, 7, 1)))
    with pytest.raises(RuntimeError):  # the twin fails too, later, in its head
        torch_models.DigitsCNN()(torch.zeros(2, 1, 7, 7))


def test_digits_cnn_takes_an_empty_batch_like_its_twin():
    twin = torch_models.DigitsCNN()
    variables = torch_to_flax(twin)
    out = models.DigitsCNN().apply(variables, jnp.zeros((0, 8, 8, 1)))
    assert out.shape == tuple(twin(torch.zeros(0, 1, 8, 8)).shape) == (0, 10)


def test_restore_into_a_template_consumed_by_a_donating_step(tmp_path):
    model = models.MLP(10, 5, 2)
    template = create_train_state(
        model, model.init(jax.random.key(0), _x(1, 10)), optax.sgd(0.1, momentum=0.9)
    )
    state, _ = make_train_step(mse)(template, (_x(4, 10), _x(4, 2)))
    assert template.params["linear1"]["kernel"].is_deleted()  # donated
    save_checkpoint(tmp_path / "ckpt", state)
    restored = restore_checkpoint(tmp_path / "ckpt", template)
    assert int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_complex_inputs_raise_where_the_twin_raises(name):
    ex = EXAMPLES[name]
    rng = np.random.default_rng(0)
    inputs = [a.astype(np.complex64) for a in ex.make_inputs(rng, 2, image_size=4)]
    port_inputs = [jnp.asarray(a) for a in ex.port_inputs(inputs)]
    floats = [jnp.real(a) for a in port_inputs]
    twin = ex.torch_module()
    port = ex.flax_module()
    variables = torch_to_flax(twin)
    if not variables:
        variables = port.init(jax.random.key(0), *floats)
    nnx_port = nnx_models.from_example(ex, rngs=nnx.Rngs(0))
    try:
        want = twin(*(torch.from_numpy(a) for a in inputs))
    except RuntimeError:  # a dtype mismatch with its float weights
        for run in (lambda: port.apply(variables, *port_inputs), lambda: nnx_port(*port_inputs)):
            with pytest.raises(
                ValueError, match=f"{name}: expected x of a real floating.*complex64"
            ):
                run()
        return
    # An elementwise twin computes in complex: so do the ports, with the same numbers.
    assert name in {"SimpleAdder", "RiskyModule", "MultiplyByTwo"}
    with jax.numpy_dtype_promotion("standard"):  # JAX's default; the tests run strict
        outs = [port.apply(variables, *port_inputs), nnx_port(*port_inputs)]
    for got in outs:
        assert got.dtype == np.complex64
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=F32)


def test_float64_parity_still_runs_with_the_new_checks():
    torch.manual_seed(0)
    twin = torch_models.MLP(10, 5, 2).double()
    with x64(np.float64):
        report = check_parity(
            twin,
            models.MLP(10, 5, 2, param_dtype=jnp.float64),
            torch_to_flax(twin),
            [_x(4, 10).astype(np.float64)],
        )
    assert report.ok, str(report)
