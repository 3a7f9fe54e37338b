"""Data-parallel training of the seed examples: the same Adam run on one device, on every device
of this process, or as one of several processes, and the comparison of two runs.

Every run is ``torch.optim.Adam(lr=1e-3)``'s update (``funcmod.optim.torch_adam``) on the mean
squared error against standard-normal targets, in PyTorch's layout: per step a fresh global batch
of standard-normal inputs (``example_data``), the same in every process. The runs start from the
Flax port's own initialisation (``initial_variables``: ``model.init``, PyTorch's default
initialisers). ``funcmod.tools.ddp`` trains the same with PyTorch's ``DistributedDataParallel``.

One device and N devices compute the same mathematics summed in another order, so runs agree
to rounding (``funcmod.precision.RTOL['parity']``), not bitwise; where a ReLU input lies within
rounding of 0, or Adam divides a near-cancelling gradient element by its own size, float32 runs
part ways (docs/pitfalls.md, "Data-parallel runs: one device against many").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from funcmod.articles.catalog import EXAMPLES, Example, get_example
from funcmod.layout import to_channels_first
from funcmod.optim import torch_adam
from funcmod.precision import float_dtype, rtol, x64_for
from funcmod.sharding import data_mesh, process_rows, replicate
from funcmod.train import (
    create_train_state,
    make_train_epoch,
    make_train_step,
    mse_in_torch_layout,
    raise_if_nonfinite,
    stack_batches,
)
from funcmod.tree import compare_trees, leaves_with_paths

__all__ = [
    "LR",
    "TRAINABLE",
    "Run",
    "compare_runs",
    "device_parity",
    "example_data",
    "global_batch_grads",
    "initial_variables",
    "max_rel",
    "train_example",
    "trainable_example",
]

# torch.optim.Adam's learning rate in every run.
LR = 1e-3
TRAINABLE = [name for name, ex in EXAMPLES.items() if ex.trainable]


@dataclass
class Run:
    """The result of one training run.

    Attributes:
      example, dtype: what was trained (``'float32'`` or ``'float64'``).
      params: the final parameters, ``{'linear1/kernel': array, ...}`` (Flax paths and layout;
        a flat dict compares with ``compare_trees`` like the nested one).
      losses: (steps,) the global-batch loss of each step, before its update.
      devices, processes: how many devices and processes the run was split over.
      first_grads: the gradient of the first step (after DDP's all-reduce), by Flax path, when
        the run recorded it; None otherwise.
      history: the parameters after every step (``train_example(history=True)``), else None.
    """

    example: str
    dtype: str
    params: dict[str, np.ndarray]
    losses: np.ndarray
    devices: int = 1
    processes: int = 1
    first_grads: dict[str, np.ndarray] | None = field(default=None)
    history: list[dict[str, np.ndarray]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arrays as nested lists (float32 and float64 round-trip exactly)."""
        return {
            "example": self.example,
            "dtype": self.dtype,
            "params": {k: v.tolist() for k, v in self.params.items()},
            "losses": self.losses.tolist(),
            "devices": self.devices,
            "processes": self.processes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        dtype = np.dtype(d["dtype"])
        return cls(
            example=d["example"],
            dtype=d["dtype"],
            params={k: np.asarray(v, dtype) for k, v in d["params"].items()},
            losses=np.asarray(d["losses"], dtype),
            devices=int(d["devices"]),
            processes=int(d["processes"]),
        )


def trainable_example(example: str | Example) -> Example:
    """The catalog entry of a trainable example; ValueError naming the trainable ones else."""
    ex = get_example(example)
    if not ex.trainable:
        raise ValueError(f"{ex.name} has no parameters to train; expected one of {TRAINABLE}")
    return ex


def initial_variables(
    example: str | Example, *, dtype: Any = np.float32, seed: int = 0, image_size: int = 8
) -> dict[str, Any]:
    """The Flax port's ``model.init(jax.random.key(seed), x)``, parameters of ``dtype``, as numpy
    arrays (the same in every process: the port initialises like PyTorch, from the key)."""
    ex, dtype = trainable_example(example), float_dtype(dtype)
    x = ex.port_inputs(ex.make_inputs(np.random.default_rng(0), 1, dtype, image_size))
    with x64_for(dtype):
        variables = ex.flax_module(dtype).init(jax.random.key(seed), *x)
        return jax.tree.map(np.asarray, variables)


def example_data(
    example: str | Example,
    variables: dict[str, Any],
    *,
    steps: int,
    batch: int,
    dtype: Any = np.float32,
    seed: int = 0,
    image_size: int = 8,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The global batches of a run, in PyTorch's layout, the same in every process.

    Per step, from ``np.random.default_rng(seed)``: standard-normal inputs
    (``Example.make_inputs``), then standard-normal targets of the output's shape. The first
    ``n`` batches do not depend on ``steps``: a short run sees the start of a long one.

    Returns:
      ``(inputs, targets)``: ``inputs`` a tuple of (steps, batch, *shape) arrays, one per
      forward argument (images (steps, batch, C, H, W)); ``targets`` (steps, batch, *out).
    """
    ex, dtype = trainable_example(example), float_dtype(dtype)
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    rng = np.random.default_rng(seed)
    probe = ex.port_inputs(ex.make_inputs(np.random.default_rng(0), batch, dtype, image_size))
    with x64_for(dtype):
        out = jax.eval_shape(ex.flax_module(dtype).apply, variables, *probe)
    out_shape = np.shape(to_channels_first(np.empty(out.shape, dtype), ex.output_layout))
    inputs, targets = [], []
    for _ in range(steps):
        inputs.append(ex.make_inputs(rng, batch, dtype, image_size))
        targets.append(rng.standard_normal(out_shape).astype(dtype))
    stacked = tuple(np.stack(xs) for xs in zip(*inputs, strict=True))
    return stacked, np.stack(targets)


def _host(tree: Any) -> dict[str, np.ndarray]:
    """A replicated (or single-device) tree as numpy arrays by path: this process's copy."""
    flat = leaves_with_paths(tree)
    return {k: np.asarray(v.addressable_data(0)) for k, v in flat.items()}


def train_example(
    example: str | Example,
    *,
    steps: int = 200,
    dtype: Any = np.float32,
    batch: int = 16,
    image_size: int = 8,
    seed: int = 0,
    mesh: Mesh | None = None,
    variables: dict[str, Any] | None = None,
    history: bool = False,
) -> Run:
    """Train one example for ``steps`` Adam steps: one ``make_train_epoch`` call, or with
    ``history`` one ``make_train_step`` call per step, keeping the parameters after each.

    Args:
      example: a trainable example or its name (``'MLP'``).
      steps: number of steps, each on a fresh global batch of ``batch`` rows.
      dtype: ``np.float32`` or ``np.float64`` (64-bit JAX is enabled for the run).
      batch: the global batch size; with a mesh, divisible by its device count.
      image_size: height and width of image inputs.
      seed: seeds the data (``example_data``) and the initialisation (``initial_variables``).
      mesh: None for the plain single-device step; else data parallel over the mesh's
        ``'data'`` axis (in a multi-process run every process calls this, each feeding its
        ``process_rows``).
      variables: the initial variables (default ``initial_variables(example, seed=seed)``).
      history: record the parameters after every step in ``Run.history``.

    Raises:
      ValueError: ``batch`` does not divide evenly over the mesh's devices (naming both).
      NonFiniteLossError: a loss was NaN or infinite.
    """
    ex, dtype = trainable_example(example), float_dtype(dtype)
    if variables is None:
        variables = initial_variables(ex, dtype=dtype, seed=seed, image_size=image_size)
    inputs, targets = example_data(
        ex, variables, steps=steps, batch=batch, dtype=dtype, seed=seed, image_size=image_size
    )
    if mesh is not None:
        rows = process_rows(batch, mesh)  # this process's rows of every global batch
        inputs, targets = tuple(a[:, rows] for a in inputs), targets[:, rows]
    per_step = [(ex.port_inputs(tuple(a[t] for a in inputs)), targets[t]) for t in range(steps)]

    loss_fn = mse_in_torch_layout(ex.output_layout)
    with x64_for(dtype):
        state = create_train_state(ex.flax_module(dtype), variables, torch_adam(LR))
        if mesh is not None:
            state = replicate(state, mesh)
        params_history = None
        if history:
            train_step = make_train_step(loss_fn, mesh=mesh)
            params_history, step_losses = [], []
            for batch_t in per_step:
                state, metrics = train_step(state, batch_t)
                step_losses.append(_host(metrics)["loss"])
                params_history.append(_host(state.params))
            losses = np.stack(step_losses)
        else:
            state, metrics = make_train_epoch(loss_fn, mesh=mesh)(state, stack_batches(per_step))
            losses = _host(metrics)["loss"]
        raise_if_nonfinite(losses)
        return Run(
            example=ex.name,
            dtype=dtype.name,
            params=_host(state.params),
            losses=losses,
            devices=1 if mesh is None else mesh.size,
            processes=1 if mesh is None else len({d.process_index for d in mesh.devices.flat}),
            history=params_history,
        )


def max_rel(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The largest per-leaf relative error of ``actual`` against ``expected``."""
    return max(d.max_rel for d in compare_trees(actual, expected, rtol=0.0))


def compare_runs(actual: Run, expected: Run) -> dict[str, Any]:
    """How far ``actual`` is from ``expected``, against ``funcmod.precision.RTOL['parity']``:
    two runs of the same mathematics, summed in another order.

    Errors are ``compare_trees``'s max relative errors (per leaf ``max|a - e| / max|e|``), the
    max over leaves.

    Returns:
      ``max_rel``: the final parameters; ``leaves``: the same per leaf; ``loss_max_rel``: the
      loss curves; when both runs have a history, ``max_rel_any_step`` (the max over every
      step's parameters) and ``worst_step`` (the step it was reached at, from 0), else None;
      ``target``; ``ok`` (every figure within the target); ``bitwise`` (all of them 0).
    """
    if (actual.example, actual.dtype) != (expected.example, expected.dtype):
        raise ValueError(
            f"cannot compare {actual.example} {actual.dtype} with "
            f"{expected.example} {expected.dtype}"
        )
    target = rtol("parity", expected.dtype)
    leaves = compare_trees(actual.params, expected.params, rtol=target)
    loss = compare_trees(actual.losses, expected.losses, rtol=target)[0]
    final = max(d.max_rel for d in leaves)
    any_step, worst_step = None, None
    if actual.history is not None and expected.history is not None:
        per_step = [max_rel(a, e) for a, e in zip(actual.history, expected.history, strict=True)]
        worst_step = int(np.argmax(per_step))
        any_step = per_step[worst_step]
    worst = max(final, loss.max_rel, any_step or 0.0)
    return {
        "max_rel": final,
        "leaves": {d.path: d.max_rel for d in leaves},
        "loss_max_rel": loss.max_rel,
        "max_rel_any_step": any_step,
        "worst_step": worst_step,
        "target": target,
        "ok": worst <= target,
        "bitwise": worst == 0.0,
    }


def device_parity(
    examples: Sequence[str] = tuple(TRAINABLE),
    *,
    dtypes: Sequence[str] = ("float32", "float64"),
    steps: int = 200,
    batch: int = 16,
    image_size: int = 8,
    seed: int = 0,
    devices: Sequence[jax.Device] | None = None,
) -> list[dict[str, Any]]:
    """Each example and dtype trained three times from the same weights on the same batches,
    one jitted step per batch: single-device (no mesh), on a one-device mesh and data parallel
    over ``devices`` (default every device of this process).

    Returns:
      one row per (example, dtype): ``example``, ``dtype``, ``devices``, ``steps``, the
      ``compare_runs`` fields of the many-device run against the single-device run
      (``max_rel`` after the last step, ``max_rel_any_step`` and ``worst_step`` over all steps,
      ``leaves``, ``loss_max_rel``, ``target``, ``ok``), ``one_device_bitwise`` (the one-device
      mesh gave bitwise the single-device parameters after every step and losses) and ``moved``
      (how far training moved the parameters: the max over leaves of
      ``max|initial - final| / max|final|``, the scale the errors are read against).
    """
    devices = list(jax.local_devices() if devices is None else devices)
    rows = []
    for name in examples:
        for dtype in dtypes:
            variables = initial_variables(name, dtype=dtype, seed=seed, image_size=image_size)
            kwargs = dict(
                steps=steps,
                dtype=dtype,
                batch=batch,
                image_size=image_size,
                seed=seed,
                history=True,
            )
            single = train_example(name, variables=variables, **kwargs)
            one = train_example(name, variables=variables, mesh=data_mesh(devices[:1]), **kwargs)
            many = train_example(name, variables=variables, mesh=data_mesh(devices), **kwargs)
            initial = leaves_with_paths(variables["params"])
            rows.append(
                {
                    "example": name,
                    "dtype": np.dtype(dtype).name,
                    "devices": len(devices),
                    "steps": steps,
                    **compare_runs(many, single),
                    "one_device_bitwise": compare_runs(one, single)["bitwise"],
                    "moved": max_rel(initial, single.params),
                }
            )
    return rows


def global_batch_grads(
    example: str | Example,
    *,
    dtype: Any = np.float32,
    batch: int = 16,
    image_size: int = 8,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The gradient of the mean loss over the whole first global batch at the initial weights,
    single device: what DDP's averaged first gradient should be."""
    ex, dt = trainable_example(example), float_dtype(dtype)
    variables = initial_variables(ex, dtype=dt, seed=seed, image_size=image_size)
    inputs, targets = example_data(
        ex, variables, steps=1, batch=batch, dtype=dt, seed=seed, image_size=image_size
    )
    model = ex.flax_module(dt)
    x = ex.port_inputs(tuple(a[0] for a in inputs))

    loss_fn = mse_in_torch_layout(ex.output_layout)

    def loss(params: Any) -> jax.Array:
        return loss_fn(model.apply({"params": params}, *x), targets[0])

    with x64_for(dt):
        return leaves_with_paths(jax.tree.map(np.asarray, jax.grad(loss)(variables["params"])))
