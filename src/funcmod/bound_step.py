"""A train step bound to its state, which it holds as a flat list of arrays between steps.

``make_train_step``'s function takes a ``TrainState`` and returns a new one: on every call, JAX
flattens the state on the way into the compiled program and builds a new ``TrainState`` (and
its nested parameter dicts and optimizer tuples) on the way out. For a model whose whole step
takes tens of microseconds that Python work is a visible share of the step (docs/pitfalls.md,
"The train step's overhead"). A ``BoundTrainStep`` crosses the jit boundary with the state's
leaves in a list, keeps them between steps, and builds the ``TrainState`` only when asked::

    step = bind_train_step(mse, state)   # takes the state over: use step.state from now on
    for batch in batches:
        metrics = step(batch)            # {'loss': () array}; the state advances inside
    state = step.state                   # flax.training.train_state.TrainState (funcmod's)

It runs the same step function (``make_train_step_fn``) as ``make_train_step``, so the two give
the same numbers bitwise; what differs is only what crosses the boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from funcmod.sharding import DATA_AXIS, shard_batch
from funcmod.train import (
    Batch,
    LossFn,
    Metrics,
    TrainState,
    check_batch_dtypes,
    jit_step,
    make_train_step_fn,
)

__all__ = ["BoundTrainStep", "bind_train_step"]


class BoundTrainStep:
    """``make_train_step``'s step with the state held inside: ``metrics = step(batch)``.

    Build it with ``bind_train_step``. With ``donate=True`` (the default) every call consumes
    the arrays of the previous state: a ``TrainState`` read from ``state`` before a call has
    deleted arrays after it (read it again). The state's structure (its tree of parameters and
    optimizer state, ``apply_fn`` and ``tx``) is fixed at binding; ``state = new_state``
    rebinds a state of the same structure without recompiling.
    """

    def __init__(self, fn: Any, state: TrainState, *, donate: bool, mesh: Mesh | None, axis: str):
        leaves, treedef = jax.tree.flatten(state)
        self._treedef = treedef
        self._leaves = leaves
        self._state: TrainState | None = state
        self._mesh = mesh
        self._axis = axis

        def leaves_step(leaves: list[jax.Array], batch: Batch) -> tuple[list[jax.Array], Metrics]:
            new_state, metrics = fn(treedef.unflatten(leaves), batch)
            new_leaves, new_treedef = jax.tree.flatten(new_state)
            if new_treedef != treedef:  # at trace time, once
                raise TypeError(
                    f"the train step changed the state's structure: {treedef} -> {new_treedef}"
                )
            return new_leaves, metrics

        self._jitted = jit_step(leaves_step, donate=donate, mesh=mesh, axis=axis, batch_axis=0)

    @property
    def jitted(self) -> Any:
        """The jitted ``(leaves, batch) -> (new_leaves, metrics)`` function (``lower``,
        ``_cache_size``)."""
        return self._jitted

    @property
    def state(self) -> TrainState:
        """The current ``TrainState``, built from the held leaves on first read after a step."""
        if self._state is None:
            self._state = self._treedef.unflatten(self._leaves)
        return self._state

    @state.setter
    def state(self, state: TrainState) -> None:
        leaves, treedef = jax.tree.flatten(state)
        if treedef != self._treedef:
            bound = self.state
            differ = [
                name
                for name in ("apply_fn", "tx", "key_impl")
                if getattr(state, name) != getattr(bound, name)
            ] + [
                name
                for name in ("step", "params", "opt_state", "batch_stats", "dropout_key")
                if jax.tree.structure(getattr(state, name))
                != jax.tree.structure(getattr(bound, name))
            ]
            raise ValueError(
                f"the new state differs from the bound one in {differ or ['its type']} (another "
                "tx or apply_fn object is another program): bind a new step for it"
            )
        self._leaves, self._state = leaves, state

    def __call__(self, batch: Batch) -> Metrics:
        """One step on ``batch``; returns ``{'loss': () array}`` and keeps the new state.

        A float64 batch while 64-bit JAX is off raises ValueError before any work (as
        ``make_train_step``'s function does)."""
        # The same check (and sharding) as make_train_step's wrapper (train._jit_step), written
        # here rather than called through that wrapper: the extra Python frame per step cost
        # 1-4% of a small model's step (CustomLinear b32: 61.8 against 59.4 us, interleaved).
        check_batch_dtypes(batch)
        if self._mesh is not None:
            batch = shard_batch(batch, self._mesh, axis=self._axis)
        self._leaves, metrics = self._jitted(self._leaves, batch)
        self._state = None
        return metrics


def bind_train_step(
    loss_fn: LossFn,
    state: TrainState,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    donate: bool = True,
    mesh: Mesh | None = None,
    axis: str = DATA_AXIS,
) -> BoundTrainStep:
    """``make_train_step(loss_fn, ...)`` bound to ``state``: a ``BoundTrainStep``.

    Args and behaviour as ``make_train_step`` (``mesh``: data parallel, ``state`` already
    replicated with ``funcmod.sharding.replicate``); the state is held by the returned object,
    read it back with ``.state``.
    """
    if not isinstance(state, TrainState):
        raise TypeError(
            f"bind_train_step needs a funcmod.train.TrainState, got {type(state).__name__}"
        )
    fn = make_train_step_fn(loss_fn, apply_kwargs=apply_kwargs)
    return BoundTrainStep(fn, state, donate=donate, mesh=mesh, axis=axis)
