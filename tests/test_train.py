"""funcmod.train: the jitted step against a hand-written update, scan against stepping, state
collections (BatchNorm, dropout), reproducibility, recompilation and non-finite losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcmod.articles.models import MLP
from funcmod.train import (
    NonFiniteLossError,
    create_train_state,
    first_nonfinite_step,
    make_eval_step,
    make_train_epoch,
    make_train_step,
    make_train_step_fn,
    mse,
    raise_if_nonfinite,
    softmax_cross_entropy,
    stack_batches,
)
from funcmod.tree import assert_trees_close, compare_trees
from tests.helpers import net_batches, net_state, x64

DTYPES = [np.float32, np.float64]
# One step, jitted against op by op: the same operations, so a few ulps at most (XLA fuses
# multiply-adds when jitted).
STEP_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}


TRAIN = {"train": True}
EVAL = {"train": False}


def mlp_state(dtype, tx=None, seed: int = 0):
    model = MLP(10, 5, 2, param_dtype=dtype)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 10), dtype))
    return model, create_train_state(model, variables, tx or optax.sgd(0.1, momentum=0.9))


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_matches_hand_written_update(dtype):
    with x64(dtype):
        model, state = mlp_state(dtype)
        tx = state.tx
        params = jax.tree.map(jnp.array, state.params)
        opt_state = tx.init(params)
        step = make_train_step(mse)
        for x, y in net_batches(3, dtype, batch=4):
            state, metrics = step(state, (x, y))
            loss, grads = jax.value_and_grad(
                lambda p, x=x, y=y: mse(model.apply({"params": p}, x), y)
            )(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            assert metrics["loss"].dtype == np.dtype(dtype)
            assert_trees_close(
                {"loss": metrics["loss"]}, {"loss": loss}, rtol=STEP_RTOL[np.dtype(dtype)]
            )
        assert_trees_close(state.params, params, rtol=STEP_RTOL[np.dtype(dtype)], what="params")
        assert int(state.step) == 3 and state.step.dtype == jnp.int32


def test_second_call_does_not_recompile():
    traces = []

    def counting_mse(outputs, targets):
        traces.append(1)  # runs only while tracing
        return mse(outputs, targets)

    _, state = mlp_state(np.float32)
    step = make_train_step(counting_mse)
    for x, y in net_batches(3, np.float32, batch=4):
        state, _ = step(state, (x, y))
    assert len(traces) == 1
    assert step._cache_size() == 1


def test_state_is_donated_but_callers_variables_are_not():
    model = MLP(10, 5, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    state = create_train_state(model, variables, optax.sgd(0.1))
    step = make_train_step(mse)
    new_state, _ = step(state, net_batches(1, np.float32, batch=4)[0])
    assert state.params["linear1"]["kernel"].is_deleted()
    assert not variables["params"]["linear1"]["kernel"].is_deleted()
    assert not new_state.params["linear1"]["kernel"].is_deleted()


def test_batch_stats_are_updated_and_used_in_eval():
    state = net_state(np.float32)
    before = jax.tree.map(np.array, state.batch_stats)
    step = make_train_step(mse, apply_kwargs=TRAIN)
    data = net_batches(2, np.float32, batch=4)
    for batch in data:
        state, _ = step(state, batch)
    changed = compare_trees(state.batch_stats, before, rtol=0.0)
    assert not any(d.ok for d in changed), "every running statistic moves after a train step"
    eval_step = make_eval_step(mse, apply_kwargs=EVAL)
    first, second = eval_step(state, data[0]), eval_step(state, data[0])
    assert_trees_close(first, second, rtol=0.0, what="eval twice")  # no dropout, no update
    manual = state.apply_fn(state.variables(), data[0][0], train=False)
    assert_trees_close(first["outputs"], manual, rtol=1e-6, what="eval outputs")


def test_dropout_key_changes_every_step():
    state = net_state(np.float32)
    fn = make_train_step_fn(mse, apply_kwargs=TRAIN)
    batch = net_batches(1, np.float32, batch=4)[0]
    _, m0 = fn(state, batch)
    _, m1 = fn(state.replace(step=state.step + 1), batch)
    _, m0_again = fn(state, batch)
    assert float(m0["loss"]) != float(m1["loss"])  # another dropout mask at another step
    assert float(m0["loss"]) == float(m0_again["loss"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_gives_bitwise_identical_parameters(dtype):
    with x64(dtype):
        runs = []
        for dropout_seed in (1, 1, 2):
            state = net_state(dtype, dropout_seed=dropout_seed)
            step = make_train_step(mse, apply_kwargs=TRAIN)
            for batch in net_batches(5, dtype, batch=4):
                state, _ = step(state, batch)
            runs.append(state)
        assert_trees_close(runs[0].params, runs[1].params, rtol=0.0, what="same seed")
        assert_trees_close(runs[0].batch_stats, runs[1].batch_stats, rtol=0.0, what="stats")
        other = compare_trees(runs[0].params, runs[2].params, rtol=0.0)
        assert not all(d.ok for d in other), "another dropout seed trains differently"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["mlp", "net"])
def test_train_epoch_matches_stepping_one_by_one(dtype, model):
    with x64(dtype):
        data = net_batches(6, dtype, batch=4)
        make = (lambda: mlp_state(dtype)[1]) if model == "mlp" else (lambda: net_state(dtype))
        step = make_train_step(mse, apply_kwargs=None if model == "mlp" else TRAIN)
        state = make()
        losses = []
        for batch in data:
            state, metrics = step(state, batch)
            losses.append(metrics["loss"])
        epoch = make_train_epoch(mse, apply_kwargs=None if model == "mlp" else TRAIN)
        scanned, metrics = epoch(make(), stack_batches(data))
        rtol = STEP_RTOL[np.dtype(dtype)]
        assert_trees_close(scanned.params, state.params, rtol=rtol, what="params")
        assert_trees_close(scanned.opt_state, state.opt_state, rtol=rtol, what="opt_state")
        assert_trees_close(metrics["loss"], np.array(losses), rtol=rtol, what="losses")
        np.testing.assert_array_equal(metrics["step"], np.arange(6))
        assert int(scanned.step) == 6
        if model == "net":
            assert_trees_close(scanned.batch_stats, state.batch_stats, rtol=rtol, what="stats")


def test_nonfinite_loss_is_reported_with_its_step():
    _, state = mlp_state(np.float32)
    data = net_batches(8, np.float32, batch=4)
    data[5][0][0, 0] = np.nan  # the seventh step of the run sees a NaN input
    epoch = make_train_epoch(mse)
    state, first = epoch(state, stack_batches(data[:2]))
    raise_if_nonfinite(first["loss"], int(first["step"][0]))  # all finite: no error
    assert first_nonfinite_step(first["loss"], int(first["step"][0])) is None
    state, rest = epoch(state, stack_batches(data[2:]))
    start = int(rest["step"][0])
    assert start == 2
    assert first_nonfinite_step(rest["loss"], start) == 5
    with pytest.raises(NonFiniteLossError, match="at step 5") as info:
        raise_if_nonfinite(rest["loss"], start)
    assert info.value.step == 5 and np.isnan(info.value.loss)


def test_infinite_loss_counts_as_nonfinite():
    assert first_nonfinite_step(np.array([1.0, np.inf, np.nan]), first_step=10) == 11
    with pytest.raises(ValueError, match="shape"):
        first_nonfinite_step(np.zeros((2, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses(dtype):
    with x64(dtype):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((4, 3)).astype(dtype)
        b = rng.standard_normal((4, 3)).astype(dtype)
        got = mse(jnp.asarray(a), jnp.asarray(b))
        assert got.dtype == np.dtype(dtype)
        assert_trees_close(got, np.mean((a - b) ** 2), rtol=STEP_RTOL[np.dtype(dtype)])
        labels = np.array([0, 2, 1, 2], np.int32)
        shifted = a - a.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        want = -np.mean(log_softmax[np.arange(4), labels])
        got = softmax_cross_entropy(jnp.asarray(a), jnp.asarray(labels))
        assert_trees_close(got, want, rtol=STEP_RTOL[np.dtype(dtype)])


def test_loss_argument_errors():
    logits = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="integers"):
        softmax_cross_entropy(logits, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(logits, jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        mse(logits, jnp.zeros((4, 2)))


def test_create_train_state_rejects_unknown_collections():
    model = MLP(10, 5, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    with pytest.raises(ValueError, match="buffers"):
        create_train_state(model, {**variables, "buffers": {}}, optax.sgd(0.1))


def test_stack_batches():
    stacked = stack_batches(net_batches(3, np.float32, batch=4))
    assert stacked[0].shape == (3, 4, 10) and stacked[1].shape == (3, 4, 2)
    with pytest.raises(ValueError, match="at least one"):
        stack_batches([])


def test_wide_batch_is_refused_before_the_step_and_named():
    """The per-step dtype check (cheap when the batch is fine) still names a float64 leaf."""
    _, state = mlp_state(np.float32)
    step = make_train_step(mse)
    x, y = np.ones((4, 10)), np.ones((4, 2), np.float32)  # x: float64 (numpy's default)
    with pytest.raises(ValueError, match=r"\{'batch/0': 'float64'\}"):
        step(state, (x, y))
    state, metrics = step(state, (x.astype(np.float32), y))  # the state was not consumed
    assert metrics["loss"].dtype == np.float32 and int(state.step) == 1
