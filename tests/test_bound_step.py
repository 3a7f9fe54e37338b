"""funcmod.bound_step: the bound step computes what make_train_step computes, bitwise, holds
its state, refuses bad input before any work, and runs over a mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from funcmod.articles.models import MLP
from funcmod.bound_step import BoundTrainStep, bind_train_step
from funcmod.sharding import data_mesh, replicate
from funcmod.train import create_train_state, make_train_step, mse
from funcmod.tree import assert_trees_close
from tests.helpers import net_batches, net_state, x64

TRAIN = {"train": True}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bound_step_is_bitwise_make_train_step(dtype):
    """BatchNorm statistics, dropout keys and Adam's moments all advance as in the step that
    returns a TrainState: the same program, only the boundary differs."""
    with x64(dtype):
        batches = net_batches(3, dtype)
        state = net_state(dtype)
        step = make_train_step(mse, apply_kwargs=TRAIN)
        bound = bind_train_step(mse, net_state(dtype), apply_kwargs=TRAIN)
        for batch in batches:
            state, metrics = step(state, batch)
            bound_metrics = bound(batch)
            assert np.array_equal(metrics["loss"], bound_metrics["loss"])
            assert metrics["loss"].dtype == dtype
        held = bound.state
        assert isinstance(held, train_state.TrainState)
        assert int(held.step) == 3
        assert held.batch_stats is not None and held.dropout_key is not None
        assert_trees_close(held, state, rtol=0.0, what="bound vs make_train_step")
        assert held is bound.state  # built once per step, not per read


def test_state_setter_rebinds_without_recompiling_and_refuses_another_structure():
    model = MLP(10, 5, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    batch = net_batches(1, np.float32)[0]
    tx = optax.sgd(0.1)
    bound = bind_train_step(mse, create_train_state(model, variables, tx))
    first = bound(batch)["loss"]
    bound.state = create_train_state(model, variables, tx)  # back to step 0
    assert np.array_equal(bound(batch)["loss"], first)
    assert bound.jitted._cache_size() == 1

    with pytest.raises(ValueError, match=r"in \['tx'\]"):
        bound.state = create_train_state(model, variables, optax.sgd(0.1))
    wider = MLP(10, 7, 2)
    other = wider.init(jax.random.key(0), jnp.zeros((1, 10)))
    with pytest.raises(ValueError, match=r"in \['apply_fn'\]"):
        bound.state = create_train_state(wider, other, tx)
    with pytest.raises(ValueError, match=r"in \['key_impl', 'dropout_key'\]"):
        bound.state = create_train_state(model, variables, tx, dropout_key=jax.random.key(0))
    assert int(bound.state.step) == 1  # the refused states left the bound one alone
    with pytest.raises(TypeError, match=r"funcmod\.train\.TrainState"):
        bind_train_step(mse, variables)  # type: ignore[arg-type]


def test_float64_batch_refused_before_any_work():
    model = MLP(10, 5, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    bound = bind_train_step(mse, create_train_state(model, variables, optax.sgd(0.1)))
    x, y = net_batches(1, np.float64)[0]
    with pytest.raises(ValueError, match=r"64-bit batch leaves \{'batch/0': 'float64'"):
        bound((x, y.astype(np.float32)))
    state = bound.state  # nothing donated, nothing advanced
    assert int(state.step) == 0
    assert_trees_close(state.params, variables["params"], rtol=0.0, what="untouched")


def test_donated_state_read_before_a_step_is_deleted_after_it():
    model = MLP(10, 5, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    bound = bind_train_step(mse, create_train_state(model, variables, optax.sgd(0.1)))
    batch = net_batches(1, np.float32)[0]
    before = bound.state
    bound(batch)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(before.params))
    kept = bind_train_step(mse, create_train_state(model, variables, optax.sgd(0.1)), donate=False)
    before = kept.state
    kept(batch)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(before.params))


def test_bound_step_over_a_mesh_matches_the_mesh_step():
    mesh = data_mesh()
    batches = net_batches(2, np.float32, batch=8 * len(mesh.devices))
    state = replicate(net_state(np.float32), mesh)
    step = make_train_step(mse, apply_kwargs=TRAIN, mesh=mesh)
    bound = bind_train_step(mse, replicate(net_state(np.float32), mesh), apply_kwargs=TRAIN,
                            mesh=mesh)  # fmt: skip
    assert isinstance(bound, BoundTrainStep)
    for batch in batches:
        state, metrics = step(state, batch)
        assert np.array_equal(metrics["loss"], bound(batch)["loss"])
    assert_trees_close(bound.state, state, rtol=0.0, what="bound vs mesh step")
