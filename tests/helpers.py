"""What several test modules share: the float64 switch and a small model with every kind of
state a training step carries.

Import as ``from tests.helpers import ...`` (pytest puts the project root on ``sys.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from funcmod.precision import x64_for as x64

__all__ = ["BatchNormNet", "jitted_update", "net_batches", "net_state", "shared_dir", "x64"]


class BatchNormNet(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dropout -> Dense(2): parameters, ``batch_stats`` and a
    dropout key, the state a train step and a checkpoint must carry.

    ``first_bias=False`` leaves the first Dense without a bias: BatchNorm subtracts it again, so
    its exact gradient is 0 and the computed one rounding noise, which Adam turns into steps of
    about ``lr`` with random signs; two summation orders (1 device, 8 devices) then give
    unrelated biases. Data-parallel tests use it without.
    """

    hidden: int = 8
    dropout: float = 0.5
    first_bias: bool = True
    param_dtype: type = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.Dense(self.hidden, use_bias=self.first_bias, param_dtype=self.param_dtype)(x)
        # force_float32_reductions=False: running statistics in param_dtype (float64 runs)
        x = nn.BatchNorm(
            use_running_average=not train,
            param_dtype=self.param_dtype,
            force_float32_reductions=False,
        )(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        return nn.Dense(2, param_dtype=self.param_dtype)(x)


def net_state(dtype, seed: int = 0, dropout_seed: int = 1, first_bias: bool = True):
    """A ``TrainState`` of ``BatchNormNet`` (10 features in, ``param_dtype=dtype``), torch's Adam
    at lr 1e-2 and a dropout key: parameters, ``batch_stats`` and a key for a step to carry."""
    from funcmod.optim import torch_adam
    from funcmod.train import create_train_state

    model = BatchNormNet(first_bias=first_bias, param_dtype=dtype)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 10), dtype), train=False)
    tx = torch_adam(1e-2)
    return create_train_state(model, variables, tx, dropout_key=jax.random.key(dropout_seed))


def net_batches(n: int, dtype, batch: int = 16, seed: int = 0, features: int = 10) -> list:
    """``n`` batches ``(x (batch, features), y (batch, 2))`` of standard-normal values."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((batch, features)).astype(dtype),
            rng.standard_normal((batch, 2)).astype(dtype),
        )
        for _ in range(n)
    ]


def jitted_update(tx: optax.GradientTransformation):
    """``(grads, state, params) -> (new params, new state)``: one optax step, update and
    ``apply_updates`` in one jitted call (eager ``apply_updates`` dispatches an op per leaf)."""

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def shared_dir(tmp_path_factory) -> Path:
    """One folder for every xdist worker of this run (the run's own one without xdist): what
    the workers build once, under a file lock, and all read."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
