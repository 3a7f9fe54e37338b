"""funcmod.checkpoint: lossless round trips, atomic writes, clear errors on a wrong model."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from funcmod import checkpoint
from funcmod.articles.models import MLP
from funcmod.checkpoint import CheckpointError, restore_checkpoint, save_checkpoint
from funcmod.optim import torch_adam
from funcmod.train import create_train_state, make_train_step, mse
from funcmod.tree import assert_trees_close
from tests.helpers import BatchNormNet, x64

DTYPES = [np.float32, np.float64]


def fresh_state(dtype, hidden: int = 6, seed: int = 0):
    model = BatchNormNet(hidden=hidden, dropout=0.3, param_dtype=dtype)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 3), dtype), train=False)
    tx = torch_adam(1e-2, weight_decay=1e-2, decoupled=True, amsgrad=True)
    return create_train_state(model, variables, tx, dropout_key=jax.random.key(seed + 1))


def data(n: int, dtype):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((5, 2)).astype(dtype))
        for _ in range(n)
    ]


def as_dict(state):
    return serialization.to_state_dict(state)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_lossless_and_training_resumes_identically(tmp_path, dtype):
    with x64(dtype):
        step = make_train_step(mse, apply_kwargs={"train": True})
        batches = data(6, dtype)
        state = fresh_state(dtype)
        for batch in batches[:3]:
            state, _ = step(state, batch)
        path = tmp_path / "ckpt.msgpack"
        save_checkpoint(path, state)
        restored = restore_checkpoint(path, fresh_state(dtype, seed=7))  # other values
        assert_trees_close(as_dict(restored), as_dict(state), rtol=0.0, what="restored")
        for a, b in zip(
            jax.tree.leaves(as_dict(restored)), jax.tree.leaves(as_dict(state)), strict=True
        ):
            assert np.asarray(a).dtype == np.asarray(b).dtype
        assert int(restored.step) == 3 and restored.key_impl == state.key_impl
        # every part of the state came back: the next steps are bit for bit the same
        for batch in batches[3:]:
            state, m1 = step(state, batch)
            restored, m2 = step(restored, batch)
            assert float(m1["loss"]) == float(m2["loss"])
        assert_trees_close(as_dict(restored), as_dict(state), rtol=0.0, what="resumed")


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.msgpack"
    state = fresh_state(np.float32)
    save_checkpoint(path, state)
    old = path.read_bytes()
    step = make_train_step(mse, apply_kwargs={"train": True})
    state, _ = step(state, data(1, np.float32)[0])

    def crash_halfway(f, payload: bytes) -> None:
        f.write(payload[: len(payload) // 2])
        f.flush()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint, "_write", crash_halfway)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, state)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["ckpt.msgpack"]  # no temporary file left behind
    monkeypatch.undo()
    save_checkpoint(path, state)
    assert path.read_bytes() != old
    assert os.listdir(tmp_path) == ["ckpt.msgpack"]


def test_restoring_another_models_shapes_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "ckpt.msgpack"
    save_checkpoint(path, fresh_state(np.float32, hidden=6))
    with pytest.raises(CheckpointError) as info:
        restore_checkpoint(path, fresh_state(np.float32, hidden=4))
    message = str(info.value)
    assert "params/Dense_0/kernel: checkpoint" in message
    assert "shape (3, 6) float32" in message and "shape (3, 4) float32" in message
    # The optimizer state is checked too (its inner names belong to funcmod.optim).
    assert any(
        line.strip().startswith("opt_state/") and "Dense_0/kernel:" in line
        for line in message.splitlines()
    )


def test_restoring_another_models_keys_names_them(tmp_path):
    path = tmp_path / "ckpt.msgpack"
    save_checkpoint(path, fresh_state(np.float32))
    model = MLP(3, 6, 2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    other = create_train_state(model, variables, torch_adam(1e-3))
    with pytest.raises(CheckpointError, match="params/linear1/kernel") as info:
        restore_checkpoint(path, other)
    assert "params/Dense_0/kernel" in str(info.value)
    assert "batch_stats" in str(info.value)


def test_restoring_another_dtype_names_both(tmp_path):
    path = tmp_path / "ckpt.msgpack"
    with jax.enable_x64(True):
        save_checkpoint(path, fresh_state(np.float64))
    with pytest.raises(CheckpointError, match=r"float64.*expects shape \(3, 6\) float32"):
        restore_checkpoint(path, fresh_state(np.float32))


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt.msgpack"
    path.write_bytes(b"\xc1 not msgpack")
    with pytest.raises(CheckpointError, match="not a msgpack checkpoint"):
        restore_checkpoint(path, fresh_state(np.float32))
