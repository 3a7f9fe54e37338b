"""Jitted training of a Flax model with optax, built on ``flax.training.train_state.TrainState``.

One training step is a pure function of ``(state, batch)``::

    state = create_train_state(model, variables, optax.adam(1e-3))
    train_step = make_train_step(mse)                 # jitted once, state buffers donated
    state, metrics = train_step(state, (x, y))        # metrics['loss']: () array

    train_epoch = make_train_epoch(mse)               # many steps in one dispatch (lax.scan)
    state, metrics = train_epoch(state, stack_batches(batches))  # metrics['loss']: (steps,)
    raise_if_nonfinite(metrics['loss'], first_step=...)

A batch is ``(inputs, targets)``: ``inputs`` is one array or a tuple of arrays (the model's
positional arguments), ``targets`` whatever ``loss_fn(outputs, targets)`` takes.

Models with BatchNorm keep their running statistics in ``state.batch_stats`` (the step applies
the model with ``mutable=['batch_stats']``); models with dropout get a fresh key every step,
``fold_in(dropout_key, step)``, so a run is reproducible from its seed and its step count.

Data parallelism: the step is a pure function of ``(state, batch)`` (``make_train_step_fn``
gives it unjitted), so training on many devices is the same step jitted with shardings. Pass a
``jax.sharding.Mesh`` (``funcmod.sharding.data_mesh()``: one axis ``'data'`` over
``jax.devices()``)::

    mesh = data_mesh()                                # Mesh('data': n_devices)
    state = replicate(create_train_state(...), mesh)  # every device holds all parameters
    train_step = make_train_step(mse, mesh=mesh)      # batch split along 'data'
    state, metrics = train_step(state, (x, y))        # x: (B, ...), B divisible by n_devices

Each device computes the loss and gradient of its rows; the loss is the mean over the global
batch, so XLA inserts the all-reduce that sums the per-device partial gradients (PyTorch DDP's
gradient averaging). BatchNorm statistics are those of the global batch too (like
``torch.nn.SyncBatchNorm``, not like DDP's per-process BatchNorm), and dropout draws the mask it
draws on one device (``jax_threefry_partitionable``, JAX's default). On a one-device mesh the
step is bitwise the single-device step. Over several processes (``funcmod.sharding.initialize``)
every process runs the same program and feeds its own rows of the global batch
(``funcmod.sharding.process_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcmod.layout import to_channels_first
from funcmod.sharding import DATA_AXIS, batch_sharding, check_axis, shard_batch
from funcmod.tree import leaves_with_paths

__all__ = [
    "Batch",
    "NonFiniteLossError",
    "TrainState",
    "check_batch_dtypes",
    "create_train_state",
    "first_nonfinite_step",
    "jit_step",
    "make_eval_step",
    "make_train_epoch",
    "make_train_step",
    "make_train_step_fn",
    "mse",
    "mse_in_torch_layout",
    "raise_if_nonfinite",
    "softmax_cross_entropy",
    "stack_batches",
]

# (inputs, targets): inputs is one array or a tuple of arrays.
Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's ``TrainState`` plus what stateful models need.

    Attributes (beyond ``step``, ``apply_fn``, ``params``, ``tx``, ``opt_state``):
      batch_stats: the ``'batch_stats'`` collection (BatchNorm running statistics), or None.
      dropout_key: raw key data (``jax.random.key_data``, e.g. (2,) uint32) from which the key
        of step ``n`` is ``fold_in(key, n)``; None for a model without dropout.
      key_impl: the PRNG implementation of ``dropout_key`` (``'threefry2x32'``); static.
    """

    batch_stats: Any = None
    dropout_key: jax.Array | None = None
    key_impl: str | None = struct.field(pytree_node=False, default=None)

    def step_rngs(self) -> dict[str, jax.Array] | None:
        """``{'dropout': key}`` for the current step, or None without a dropout key."""
        if self.dropout_key is None:
            return None
        key = jax.random.wrap_key_data(self.dropout_key, impl=self.key_impl)
        return {"dropout": jax.random.fold_in(key, self.step)}

    def variables(self, params: Any = None) -> dict[str, Any]:
        """The variables to apply the model with: ``{'params': ..., 'batch_stats': ...}``."""
        variables = {"params": self.params if params is None else params}
        if self.batch_stats is not None:
            variables["batch_stats"] = self.batch_stats
        return variables


def create_train_state(
    model: nn.Module,
    variables: Mapping[str, Any],
    tx: optax.GradientTransformation,
    *,
    dropout_key: jax.Array | None = None,
) -> TrainState:
    """A ``TrainState`` at step 0 (an int32 array) for ``model`` with ``variables``.

    Args:
      model: the Flax module; its ``apply`` becomes ``state.apply_fn``.
      variables: ``{'params': ...}`` plus optionally ``'batch_stats'`` (``model.init``'s result
        or ``funcmod.convert.torch_to_flax``'s). The arrays are copied, so donating the state to
        a train step never deletes the caller's arrays.
      tx: the optax transformation (see ``funcmod.optim.from_torch``).
      dropout_key: a PRNG key (typed or raw) for models with dropout.

    Raises:
      ValueError: ``variables`` has no ``'params'`` or a collection other than ``'params'`` and
        ``'batch_stats'`` (such a collection would be silently frozen).
    """
    unknown = sorted(set(variables) - {"params", "batch_stats"})
    if "params" not in variables or unknown:
        raise ValueError(
            f"variables must have 'params' and optionally 'batch_stats'; got collections "
            f"{sorted(variables)} (unsupported: {unknown})"
        )
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731  (jnp.array copies)
    key_data, key_impl = None, None
    if dropout_key is not None:
        if jax.dtypes.issubdtype(dropout_key.dtype, jax.dtypes.prng_key):
            key_impl = str(jax.random.key_impl(dropout_key))
            key_data = jnp.array(jax.random.key_data(dropout_key))
        else:  # a raw key such as jax.random.PRNGKey(0): the default implementation
            key_impl = str(jax.random.key_impl(jax.random.wrap_key_data(dropout_key)))
            key_data = jnp.array(dropout_key)
    state = TrainState.create(
        apply_fn=model.apply,
        params=copy(variables["params"]),
        tx=tx,
        batch_stats=copy(variables["batch_stats"]) if "batch_stats" in variables else None,
        dropout_key=key_data,
        key_impl=key_impl,
    )
    return state.replace(step=jnp.zeros((), jnp.int32))


# --- losses -------------------------------------------------------------------------------------


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error, ``torch.nn.functional.mse_loss``'s default: both arrays the same
    shape and dtype. Returns a () array."""
    if outputs.shape != targets.shape:
        raise ValueError(f"mse: outputs {outputs.shape} and targets {targets.shape} differ")
    return jnp.mean(jnp.square(outputs - targets))


def mse_in_torch_layout(output_layout: str | None) -> LossFn:
    """``mse`` of a port's outputs moved back to PyTorch's layout first (``NHWC -> NCHW`` for
    ``output_layout='NCHW'``), against targets in PyTorch's layout: the loss a twin computes."""

    def loss_fn(outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return mse(to_channels_first(outputs, output_layout), targets)

    return loss_fn


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, ignore_index: int = -100
) -> jax.Array:
    """Mean softmax cross-entropy with integer labels, ``torch.nn.functional.cross_entropy``'s
    default, ``ignore_index`` included.

    A label equal to ``ignore_index`` (default -100, PyTorch's) adds nothing to the loss and is
    left out of the mean's count; when every label is ignored the mean is 0/0, NaN, as in
    PyTorch. Any other label must be in [0, classes). Concrete labels (numpy or JAX arrays
    outside ``jit``) are checked here and an out-of-range one raises, where PyTorch raises
    IndexError. Under ``jit`` the values cannot be checked: an out-of-range label makes the loss
    NaN (``raise_if_nonfinite`` reports its step) rather than what optax's
    ``softmax_cross_entropy_with_integer_labels`` does with it (-1 reads the last class).

    Args:
      logits: (..., classes) floats.
      labels: (...) integers (int32) in [0, classes) or equal to ``ignore_index``.
      ignore_index: the label value that marks an element to leave out.

    Returns:
      a () array.
    """
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers (int32), got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {labels.shape} must be logits {logits.shape} without the last")
    classes = logits.shape[-1]
    try:
        values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:  # traced: checked through NaN below
        values = None
    if values is not None:
        bad = values[(values != ignore_index) & ((values < 0) | (values >= classes))]
        if bad.size:
            raise ValueError(
                f"labels must be in [0, {classes}) or equal ignore_index={ignore_index}; got "
                f"{sorted(set(bad.tolist()))[:10]}"
            )
    ignored = labels == ignore_index
    in_range = (labels >= 0) & (labels < classes) & ~ignored
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(in_range, labels, 0))
    losses = jnp.where(in_range | ignored, losses, jnp.nan)  # out of range (traced): NaN
    kept = ~ignored
    return jnp.sum(jnp.where(kept, losses, 0.0)) / jnp.sum(kept).astype(losses.dtype)


_WIDE = frozenset((np.dtype(np.float64), np.dtype(np.complex128)))


def check_batch_dtypes(batch: Any) -> None:
    """Raise ValueError if ``batch`` holds float64 (or complex128) arrays while 64-bit JAX is
    off: ``jax.jit`` would turn them into float32 without a word, and the run would train in
    another precision than the data's."""
    if jax.config.jax_enable_x64:
        return
    # Called before every step, so the common case is a plain loop over the leaves' dtypes; the
    # paths are built only to name a wide leaf (building them every step cost about a fifth of a
    # small model's step: docs/pitfalls.md, "The train step's overhead").
    for leaf in jax.tree.leaves(batch):
        if getattr(leaf, "dtype", None) in _WIDE:
            break
    else:
        return
    wide = {
        f"batch/{path}" if path else "batch": np.dtype(leaf.dtype).name
        for path, leaf in leaves_with_paths(batch).items()
        if getattr(leaf, "dtype", None) is not None and np.dtype(leaf.dtype) in _WIDE
    }
    if wide:
        raise ValueError(
            f"64-bit batch leaves {wide} with 64-bit JAX off: they would be trained in 32 bits; "
            "run inside `with jax.enable_x64(True):` (or cast the batch to float32)"
        )


def _refusing_wide_batches(jitted: Callable[..., Any]) -> Callable[..., Any]:
    """``jitted(state, batch)`` after ``check_batch_dtypes(batch)``; the jitted function's
    ``lower`` and ``_cache_size`` stay reachable, and it is the ``jitted`` attribute."""

    def step(state: TrainState, batch: Batch) -> Any:
        check_batch_dtypes(batch)
        return jitted(state, batch)

    step.jitted = jitted  # type: ignore[attr-defined]
    step.lower = jitted.lower  # type: ignore[attr-defined]
    step._cache_size = jitted._cache_size  # type: ignore[attr-defined]
    return step


def jit_step(
    fn: Callable[[Any, Batch], Any],
    *,
    donate: bool,
    mesh: Mesh | None,
    axis: str = DATA_AXIS,
    batch_axis: int = 0,
) -> Any:
    """``jax.jit(fn)`` for ``fn(state, batch)``, the state's buffers donated if ``donate``; with
    a mesh, the state and the outputs replicated and the batch split along ``batch_axis`` over
    the mesh axis ``axis``. No batch check: callers run ``check_batch_dtypes`` first."""
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate_argnums)
    check_axis(mesh, axis)
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        fn,
        in_shardings=(replicated, batch_sharding(mesh, axis, batch_axis)),
        out_shardings=replicated,
        donate_argnums=donate_argnums,
    )


def _jit_step(
    fn: Callable[[TrainState, Batch], Any],
    *,
    donate: bool,
    mesh: Mesh | None,
    axis: str,
    batch_axis: int,
) -> Callable[[TrainState, Batch], Any]:
    """``jit_step(fn)`` behind ``check_batch_dtypes`` (and ``shard_batch`` with a mesh)."""
    jitted = jit_step(fn, donate=donate, mesh=mesh, axis=axis, batch_axis=batch_axis)
    if mesh is None:
        return _refusing_wide_batches(jitted)

    def sharded(state: TrainState, batch: Batch) -> Any:
        check_batch_dtypes(batch)
        return jitted(state, shard_batch(batch, mesh, axis=axis, batch_axis=batch_axis))

    sharded.jitted = jitted  # type: ignore[attr-defined]  (for _cache_size(), lower(), ...)
    return sharded


# --- steps --------------------------------------------------------------------------------------


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)


def make_train_step_fn(
    loss_fn: LossFn, *, apply_kwargs: Mapping[str, Any] | None = None
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure, unjitted train step: ``(state, batch) -> (new_state, {'loss': () array})``.

    Args:
      loss_fn: ``loss_fn(outputs, targets) -> () array``, e.g. ``mse``.
      apply_kwargs: keyword arguments for ``apply_fn`` in training, e.g. ``{'train': True}``.
    """
    kwargs = dict(apply_kwargs or {})

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        inputs, targets = batch
        mutable = ["batch_stats"] if state.batch_stats is not None else False
        rngs = state.step_rngs()

        def loss_of(params: Any) -> tuple[jax.Array, Any]:
            out = state.apply_fn(
                state.variables(params), *_as_args(inputs), rngs=rngs, mutable=mutable, **kwargs
            )
            outputs, updates = out if mutable else (out, {})
            return loss_fn(outputs, targets), updates.get("batch_stats")

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        return new_state, {"loss": loss}

    return step


def make_train_step(
    loss_fn: LossFn,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    donate: bool = True,
    mesh: Mesh | None = None,
    axis: str = DATA_AXIS,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``make_train_step_fn`` jitted, with the state's buffers donated (the state passed in is
    consumed: use the one returned). Compiles once per batch shape.

    With ``mesh``, data parallel over the mesh axis ``axis``: the batch's (B, ...) leaves are
    split along B (``shard_batch``, called by the step: numpy batches are fine; in a
    multi-process run pass this process's rows), the state and the metrics are replicated (pass
    ``replicate(state, mesh)``). A batch that does not divide evenly over the devices raises
    ValueError. The jitted function is the returned step's ``jitted`` attribute.

    A float64 batch while 64-bit JAX is off raises ValueError (``check_batch_dtypes``) instead
    of training in float32; so do ``make_train_epoch``'s and ``make_eval_step``'s functions.
    """
    fn = make_train_step_fn(loss_fn, apply_kwargs=apply_kwargs)
    return _jit_step(fn, donate=donate, mesh=mesh, axis=axis, batch_axis=0)


def make_train_epoch(
    loss_fn: LossFn,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    donate: bool = True,
    mesh: Mesh | None = None,
    axis: str = DATA_AXIS,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Many train steps in one dispatch: ``jax.lax.scan`` of the train step over stacked batches.

    The returned jitted ``train_epoch(state, batches)`` takes ``batches`` with a leading
    (steps,) axis on every leaf (see ``stack_batches``) and returns the state after all steps
    and ``{'loss': (steps,) array, 'step': (steps,) int32}``, the loss of each step and the
    step number it was taken at (feed them to ``first_nonfinite_step``).

    With ``mesh``, data parallel as ``make_train_step``: the (steps, B, ...) leaves are split
    along B (their axis 1), the state and the metrics are replicated.
    """
    step = make_train_step_fn(loss_fn, apply_kwargs=apply_kwargs)

    def body(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        taken_at = state.step
        state, metrics = step(state, batch)
        return state, {**metrics, "step": taken_at}

    def epoch(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(body, state, batches)

    return _jit_step(epoch, donate=donate, mesh=mesh, axis=axis, batch_axis=1)


def make_eval_step(
    loss_fn: LossFn, *, apply_kwargs: Mapping[str, Any] | None = None
) -> Callable[[TrainState, Batch], Metrics]:
    """A jitted ``eval_step(state, batch) -> {'loss': () array, 'outputs': model outputs}``:
    no gradient, no state update, no dropout key (pass e.g. ``apply_kwargs={'train': False}``
    so that BatchNorm uses its running statistics)."""
    kwargs = dict(apply_kwargs or {})

    def step(state: TrainState, batch: Batch) -> Metrics:
        inputs, targets = batch
        outputs = state.apply_fn(state.variables(), *_as_args(inputs), **kwargs)
        return {"loss": loss_fn(outputs, targets), "outputs": outputs}

    return _refusing_wide_batches(jax.jit(step))


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Stack equally shaped batches on a new leading axis: ``n`` batches of (B, ...) leaves give
    one batch of (n, B, ...) leaves, the input of ``make_train_epoch``'s function."""
    if not batches:
        raise ValueError("stack_batches needs at least one batch")
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


# --- non-finite losses --------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """A loss was NaN or infinite; ``step`` is the step it was taken at, ``loss`` its value."""

    def __init__(self, step: int, loss: float):
        self.step = step
        self.loss = loss
        super().__init__(f"loss is {loss} at step {step}: the first non-finite loss")


def first_nonfinite_step(losses: Any, first_step: int = 0) -> int | None:
    """The step of the first NaN or infinite loss, or None if all are finite.

    Args:
      losses: (steps,) losses, e.g. ``make_train_epoch``'s ``metrics['loss']``.
      first_step: the step number of ``losses[0]`` (``metrics['step'][0]``).
    """
    losses = np.asarray(losses)
    if losses.ndim != 1:
        raise ValueError(f"losses must be a (steps,) array, got shape {losses.shape}")
    bad = np.flatnonzero(~np.isfinite(losses))
    return None if bad.size == 0 else first_step + int(bad[0])


def raise_if_nonfinite(losses: Any, first_step: int = 0) -> None:
    """Raise ``NonFiniteLossError`` naming the first step whose loss is NaN or infinite."""
    step = first_nonfinite_step(losses, first_step)
    if step is not None:
        raise NonFiniteLossError(step, float(np.asarray(losses)[step - first_step]))
