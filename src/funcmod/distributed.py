"""Data-parallel training of the seed examples on many devices and many processes, and the same
training with PyTorch's ``DistributedDataParallel``.

The JAX side is ``funcmod.train`` with a mesh: the batch split along the mesh axis ``'data'``,
the parameters and optimizer state replicated, one jitted program in which XLA all-reduces the
gradient. This module runs it on the seed examples (``funcmod.catalog``) and compares:

* ``parity``: each trainable example trained on one device and on every device of this process
  (``--xla_force_host_platform_device_count=8`` gives 8 CPU devices), Adam, from the same
  weights on the same batches; the max relative parameter error after every step.
* ``train``: one run, in one process or as one of several processes (``initialize``); prints
  the final parameters and losses as JSON (or writes them to ``--out``).
* ``ddp_train``: the same runs with ``torch.nn.parallel.DistributedDataParallel``, gloo backend,
  one CPU process per rank, each rank its rows of the same global batches (needs torch).

Every run is ``torch.optim.Adam(lr=1e-3)``'s update (``funcmod.optim.torch_adam``, what
``funcmod.optim.from_torch`` makes of it) on the mean squared error against standard-normal
targets, the loss of ``funcmod.trajectory.check_trajectory``: per step a fresh global batch of
standard-normal inputs in PyTorch's layout (``example_data``). The JAX runs start from the Flax
port's own initialisation (``model.init``, PyTorch's default initialisers); the DDP runs from
the same weights, loaded into the twin with ``funcmod.convert.flax_to_torch``.

How close, and why not bitwise: one device and N devices compute the same mathematics in
another order. The loss and every gradient are sums over the batch; N devices add up N partial
sums (one per device's rows) and all-reduce them, one device sums in one pass. The gradients
agree to a few ulps of their leaf's scale, and so do the parameters after 200 Adam steps
(float32 1e-7, float64 1e-16, measured per example by ``parity``), except where Adam divides
a gradient by its own size and where a ReLU input lies within rounding of 0:

* Adam's first update is ``-lr * g / (|g| + eps)``, so a gradient element near ``eps`` that is
  a near-cancelling sum passes its rounding on. SimpleConvNet, seed 0: one kernel element's
  gradient is -3.0e-8, 5e5 times smaller than the kernel's largest, and the two summation
  orders give it 0.8% apart (each of its 1024 terms rounds at ~1e-9), while the whole gradient
  agrees to 1.7e-7 of its scale. The first updates differ by 0.2%, 7.7e-6 of the kernel's
  scale after step 2, shrinking to 3.3e-6 after 200 steps (other seeds: 2e-7): within the
  float32 target of 1e-5, and the float64 run agrees to 6e-16.
* A ReLU input within rounding of 0 may be kept by one run and zeroed by the other; that
  unit's term is then in one gradient and not in the other, and from then on the runs part
  ways (docs/pitfalls.md, "ReLU kinks in long float32 runs"). SimpleCNN, seed 0, float32, two
  processes of 4 devices against one device: before step 84 the input of sample 2, pixel
  (3, 1), channel 13 is -2.6e-8 on one device and +3.7e-9 on the two-process run's device
  (exactly: -5.9e-8 and -4.5e-8, both within float32 rounding of a sum of 27 terms of ~0.3);
  channel 13's kernel jumps from 2.5e-7 to 2.0e-5 apart in that step, and the runs end 3.1e-3
  apart after 200 steps (loss curves 2.4e-6). Float64 runs do not meet such an input (6e-16
  after 200 steps), nor did the 1-vs-8-device float32 runs of seed 0 within 200 steps: float32
  agreement holds up to the first kink event, which the tests' 50-step runs stay before.
* A parameter whose exact gradient is 0, such as the bias of a layer followed by BatchNorm
  (which subtracts it again), gets rounding noise as its gradient; Adam turns that noise into
  steps of about ``lr`` with random signs, so its values are unrelated between any two
  summation orders (two device counts, or torch and JAX). Leave such biases out
  (``use_bias=False``).

Commands (float64 runs enable ``jax_enable_x64`` themselves)::

    # 1 device vs 8: every trainable example, float32 and float64, 200 steps
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m funcmod.distributed parity

    # one run on all local devices, parameters and losses as JSON on stdout
    python -m funcmod.distributed train --examples MLP --dtypes float32 --steps 200

Several processes, several hosts
--------------------------------
Every process runs the same program and calls ``initialize`` (``jax.distributed.initialize``)
before any other JAX call; the processes find each other through a coordinator, a
``host:port`` of process 0 that the other hosts can reach. After that ``jax.devices()`` lists
the devices of every process, ``funcmod.train.data_mesh()`` spans all of them, and each process
feeds only its own rows of every global batch (``funcmod.train.process_rows``)::

    # on host 0 (the coordinator; port 1234 free there)
    python -m funcmod.distributed train --coordinator HOST0:1234 --num-processes 2 --process-id 0
    # on host 1
    python -m funcmod.distributed train --coordinator HOST0:1234 --num-processes 2 --process-id 1

Both print the same parameters: they are replicated, every process holds a full copy. On one
machine, ``HOST0`` is ``127.0.0.1`` and each process can fake several CPU devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. CPU processes exchange gradients through
gloo (``jax_cpu_collectives_implementation``, set by ``initialize``); GPU processes through
NCCL, one process per GPU or per host. On a cluster that JAX detects (SLURM, Open MPI, Cloud TPU)
``jax.distributed.initialize()`` finds the coordinator and the process ids by itself. The same
in a training script of your own::

    from funcmod import distributed, train
    distributed.initialize("HOST0:1234", num_processes=2, process_id=RANK)  # first JAX call
    mesh = train.data_mesh()                                       # every device of every host
    state = train.replicate(train.create_train_state(model, variables, tx), mesh)  # same values
    step = train.make_train_step(loss_fn, mesh=mesh)
    rows = train.process_rows(global_batch_size, mesh)             # this process's rows
    for x, y in batches:                  # (B, ...) global batches; a real loader reads
        state, metrics = step(state, (x[rows], y[rows]))  # only this process's rows

Every process must hold the same initial values (the same seed, or a checkpoint) and take the
same number of steps, and the global batch size must divide evenly over all devices.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from funcmod.catalog import EXAMPLES, Example
from funcmod.layout import to_channels_first, to_channels_last
from funcmod.optim import torch_adam
from funcmod.precision import x64_for
from funcmod.train import (
    create_train_state,
    data_mesh,
    make_train_epoch,
    make_train_step,
    mse,
    process_rows,
    raise_if_nonfinite,
    replicate,
    stack_batches,
)
from funcmod.tree import compare_trees, leaves_with_paths

__all__ = [
    "LR",
    "TARGETS",
    "TRAINABLE",
    "Run",
    "compare_runs",
    "ddp_train",
    "example_data",
    "free_port",
    "global_batch_grads",
    "initial_variables",
    "initialize",
    "parity",
    "train_example",
]

# torch.optim.Adam's learning rate in every run.
LR = 1e-3
# Max relative parameter error allowed between two runs of the same training.
TARGETS = {"float32": 1e-5, "float64": 1e-12}
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


def _dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.name not in TARGETS:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _example(example: str | Example) -> Example:
    if isinstance(example, Example):
        ex = example
    elif example in EXAMPLES:
        ex = EXAMPLES[example]
    else:
        raise ValueError(f"unknown example {example!r}; expected one of {TRAINABLE}")
    if not ex.trainable:
        raise ValueError(f"{ex.name} has no parameters to train; expected one of {TRAINABLE}")
    return ex


def _flax_inputs(ex: Example, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    return tuple(to_channels_last(a, lay) for a, lay in zip(inputs, ex.input_layouts, strict=True))


def initial_variables(
    example: str | Example, *, dtype: Any = np.float32, seed: int = 0, image_size: int = 8
) -> dict[str, Any]:
    """The Flax port's ``model.init(jax.random.key(seed), x)``, parameters of ``dtype``, as numpy
    arrays (the same in every process: the port initialises like PyTorch, from the key)."""
    ex, dtype = _example(example), _dtype(dtype)
    x = _flax_inputs(ex, ex.make_inputs(np.random.default_rng(0), 1, dtype, image_size))
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
    ex, dtype = _example(example), _dtype(dtype)
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got steps={steps}, batch={batch}")
    rng = np.random.default_rng(seed)
    probe = _flax_inputs(ex, ex.make_inputs(np.random.default_rng(0), batch, dtype, image_size))
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
    ex, dtype = _example(example), _dtype(dtype)
    if variables is None:
        variables = initial_variables(ex, dtype=dtype, seed=seed, image_size=image_size)
    inputs, targets = example_data(
        ex, variables, steps=steps, batch=batch, dtype=dtype, seed=seed, image_size=image_size
    )
    if mesh is not None:
        rows = process_rows(batch, mesh)  # this process's rows of every global batch
        inputs, targets = tuple(a[:, rows] for a in inputs), targets[:, rows]
    per_step = [(_flax_inputs(ex, tuple(a[t] for a in inputs)), targets[t]) for t in range(steps)]

    def loss_fn(outputs: jax.Array, y: jax.Array) -> jax.Array:
        return mse(to_channels_first(outputs, ex.output_layout), y)

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


def _max_rel(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    return max(d.max_rel for d in compare_trees(actual, expected, rtol=0.0))


def compare_runs(actual: Run, expected: Run) -> dict[str, Any]:
    """How far ``actual`` is from ``expected``, against ``TARGETS[dtype]``.

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
    target = TARGETS[expected.dtype]
    leaves = compare_trees(actual.params, expected.params, rtol=target)
    loss = compare_trees(actual.losses, expected.losses, rtol=target)[0]
    max_rel = max(d.max_rel for d in leaves)
    any_step, worst_step = None, None
    if actual.history is not None and expected.history is not None:
        per_step = [_max_rel(a, e) for a, e in zip(actual.history, expected.history, strict=True)]
        worst_step = int(np.argmax(per_step))
        any_step = per_step[worst_step]
    worst = max(max_rel, loss.max_rel, any_step or 0.0)
    return {
        "max_rel": max_rel,
        "leaves": {d.path: d.max_rel for d in leaves},
        "loss_max_rel": loss.max_rel,
        "max_rel_any_step": any_step,
        "worst_step": worst_step,
        "target": target,
        "ok": worst <= target,
        "bitwise": worst == 0.0,
    }


def parity(
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
                    "moved": _max_rel(initial, single.params),
                }
            )
    return rows


# --- several processes --------------------------------------------------------------------------


def initialize(
    coordinator: str, num_processes: int, process_id: int, *, timeout_s: int = 300
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with gloo CPU collectives.

    Call it in every process before any other JAX call (before a device or array is created).

    Args:
      coordinator: ``'host:port'`` of process 0, reachable from every process.
      num_processes: how many processes take part.
      process_id: this process's index, 0 .. num_processes - 1.
      timeout_s: how long to wait for the others to join (and to shut down).
    """
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
        shutdown_timeout_seconds=timeout_s,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- PyTorch DistributedDataParallel ------------------------------------------------------------


@dataclass(frozen=True)
class _DdpJob:
    example: str
    dtype: str
    state_dict: dict[str, np.ndarray]
    inputs: tuple[np.ndarray, ...]  # each (steps, batch, ...), PyTorch layout
    targets: np.ndarray  # (steps, batch, ...)


def _ddp_worker(
    rank: int, world_size: int, port: int, jobs: list[_DdpJob], out_dir: str, timeout_s: float
) -> None:
    """One DDP rank: trains every job on its contiguous block of rows of each global batch."""
    import datetime

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        for i, job in enumerate(jobs):
            twin = EXAMPLES[job.example].torch_module(job.dtype)
            twin.load_state_dict({k: torch.from_numpy(v) for k, v in job.state_dict.items()})
            model = DistributedDataParallel(twin)  # broadcasts rank 0's weights (the same)
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            per = job.targets.shape[1] // world_size
            rows = slice(rank * per, (rank + 1) * per)
            losses, first_grads = [], {}
            for t in range(job.targets.shape[0]):
                opt.zero_grad(set_to_none=True)
                out = model(*(torch.from_numpy(a[t, rows]) for a in job.inputs))
                loss = torch.nn.functional.mse_loss(out, torch.from_numpy(job.targets[t, rows]))
                loss.backward()  # DDP: all-reduce, then divide by world_size
                if t == 0:
                    first_grads = {
                        f"grad:{n}": p.grad.detach().numpy().copy()
                        for n, p in twin.named_parameters()
                    }
                opt.step()
                losses.append(loss.detach().numpy().copy())
            params = {f"param:{k}": v.numpy().copy() for k, v in twin.state_dict().items()}
            np.savez(
                os.path.join(out_dir, f"job{i}_rank{rank}.npz"),
                losses=np.stack(losses),
                **params,
                **first_grads,
            )
    finally:
        dist.destroy_process_group()


def ddp_train(
    examples: Sequence[str],
    *,
    dtypes: Sequence[str] = ("float32",),
    steps: int = 200,
    batch: int = 16,
    image_size: int = 8,
    seed: int = 0,
    world_size: int = 2,
    timeout_s: float = 300.0,
) -> dict[tuple[str, str], Run]:
    """Train each example and dtype with ``DistributedDataParallel`` over ``world_size`` CPU
    processes (gloo on 127.0.0.1), from ``initial_variables`` on ``example_data``'s batches.

    Rank r takes rows ``[r * B / world_size, (r + 1) * B / world_size)`` of every global batch
    of B rows, the rows ``process_rows`` gives JAX process r on a mesh of equal processes. Each
    rank's loss is the mean over its rows; DDP averages the gradients over the ranks, so with
    equal shares the gradient is that of the global-batch mean, as in the JAX run.

    Returns:
      ``{(example, dtype): Run}``: rank 0's final parameters (Flax names and layout), the
      global-batch loss of each step (the mean of the ranks' losses) and ``first_grads``, rank
      0's gradient of the first step after DDP's all-reduce.

    Raises:
      RuntimeError: the ranks ended with different parameters, or a rank failed.
      TimeoutError: the processes did not finish within ``timeout_s`` (they are killed).
      ValueError: ``batch`` does not divide evenly over ``world_size`` processes.
    """
    if batch % world_size:
        raise ValueError(
            f"batch size {batch} does not divide evenly over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    import torch
    import torch.multiprocessing as mp

    from funcmod.convert import flax_to_torch, torch_grads_to_flax, torch_to_flax

    jobs, keys = [], []
    for name in examples:
        for dtype in dtypes:
            ex, dt = _example(name), _dtype(dtype)
            variables = initial_variables(ex, dtype=dt, seed=seed, image_size=image_size)
            inputs, targets = example_data(
                ex, variables, steps=steps, batch=batch, dtype=dt, seed=seed, image_size=image_size
            )
            twin = ex.torch_module(dt)
            flax_to_torch({"params": variables["params"]}, twin)
            state = {k: v.numpy().copy() for k, v in twin.state_dict().items()}
            jobs.append(_DdpJob(ex.name, dt.name, state, inputs, targets))
            keys.append((ex.name, dt.name))
    runs: dict[tuple[str, str], Run] = {}
    with tempfile.TemporaryDirectory(prefix="funcmod-ddp-") as out_dir:
        ctx = mp.start_processes(
            _ddp_worker,
            args=(world_size, free_port(), jobs, out_dir, timeout_s),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"DDP with {world_size} processes did not finish in {timeout_s} s"
                    )
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        for i, (name, dtype) in enumerate(keys):
            ranks = []
            for r in range(world_size):
                with np.load(os.path.join(out_dir, f"job{i}_rank{r}.npz")) as f:
                    ranks.append({k: f[k] for k in f.files})
            params = [{k[6:]: v for k, v in f.items() if k.startswith("param:")} for f in ranks]
            if any(_max_rel(p, params[0]) != 0.0 for p in params[1:]):
                raise RuntimeError(f"DDP ranks ended with different parameters ({name} {dtype})")
            twin = EXAMPLES[name].torch_module(dtype)
            twin.load_state_dict({k: torch.from_numpy(v) for k, v in params[0].items()})
            for n, p in twin.named_parameters():
                p.grad = torch.from_numpy(ranks[0][f"grad:{n}"])
            with x64_for(np.dtype(dtype)):
                final = leaves_with_paths(jax.tree.map(np.asarray, torch_to_flax(twin)["params"]))
            grads = leaves_with_paths(torch_grads_to_flax(twin)["params"])
            runs[(name, dtype)] = Run(
                example=name,
                dtype=dtype,
                params=final,
                losses=np.mean([f["losses"] for f in ranks], axis=0),
                devices=world_size,
                processes=world_size,
                first_grads=grads,
            )
    return runs


def global_batch_grads(
    example: str, *, dtype: Any = np.float32, batch: int = 16, image_size: int = 8, seed: int = 0
) -> dict[str, np.ndarray]:
    """The gradient of the mean loss over the whole first global batch at the initial weights,
    single device: what DDP's averaged first gradient should be."""
    ex, dt = _example(example), _dtype(dtype)
    variables = initial_variables(ex, dtype=dt, seed=seed, image_size=image_size)
    inputs, targets = example_data(
        ex, variables, steps=1, batch=batch, dtype=dt, seed=seed, image_size=image_size
    )
    model = ex.flax_module(dt)
    x = _flax_inputs(ex, tuple(a[0] for a in inputs))

    def loss(params: Any) -> jax.Array:
        out = model.apply({"params": params}, *x)
        return mse(to_channels_first(out, ex.output_layout), targets[0])

    with x64_for(dt):
        return leaves_with_paths(jax.tree.map(np.asarray, jax.grad(loss)(variables["params"])))


# --- command line -------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", nargs="+", default=TRAINABLE, choices=TRAINABLE)
    parser.add_argument("--dtypes", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m funcmod.distributed {parity,train}``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m funcmod.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    p_parity = sub.add_parser("parity", help="1 device vs every local device, per example")
    _common(p_parity)
    p_parity.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p_train = sub.add_parser("train", help="train; print parameters and losses as JSON")
    _common(p_train)
    p_train.add_argument("--coordinator", help="HOST:PORT of process 0 (several processes)")
    p_train.add_argument("--num-processes", type=int, default=1)
    p_train.add_argument("--process-id", type=int, default=0)
    p_train.add_argument("--timeout", type=int, default=300, help="seconds to wait for peers")
    p_train.add_argument("--devices", type=int, help="use the first N devices (one process)")
    p_train.add_argument(
        "--out", help="write the JSON to this file (gloo's log lines go to stdout too)"
    )
    args = parser.parse_args(argv)

    if args.command == "parity":
        start = time.perf_counter()
        rows = parity(
            args.examples,
            dtypes=args.dtypes,
            steps=args.steps,
            batch=args.batch,
            image_size=args.image_size,
            seed=args.seed,
        )
        if args.json:
            print(json.dumps(rows))
        else:
            n = rows[0]["devices"] if rows else jax.local_device_count()
            print(f"1 device vs {n}: max relative parameter error over {args.steps} Adam steps")
            print(
                f"{'example':16} {'dtype':8} {'final':>9} {'any step':>9} {'at':>4} "
                f"{'loss':>9} {'target':>7} {'moved':>8}  1-device mesh"
            )
            for r in rows:
                print(
                    f"{r['example']:16} {r['dtype']:8} {r['max_rel']:9.2e} "
                    f"{r['max_rel_any_step']:9.2e} {r['worst_step']:4d} {r['loss_max_rel']:9.2e} "
                    f"{r['target']:7.0e} {r['moved']:8.2e}  "
                    f"{'bitwise' if r['one_device_bitwise'] else 'DIFFERS'}"
                    f"{'' if r['ok'] else '  MISSES TARGET'}"
                )
            print(
                f"batch {args.batch}, image {args.image_size}x{args.image_size}, "
                f"{time.perf_counter() - start:.0f} s"
            )
        ok = all(r["ok"] and r["one_device_bitwise"] for r in rows)
        return 0 if ok else 1

    if args.coordinator is not None:
        if args.devices is not None:
            parser.error("--devices is for one process; several processes use all devices")
        initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.timeout)
    elif args.num_processes != 1:
        parser.error("--num-processes > 1 needs --coordinator HOST:PORT")
    try:
        devices = jax.devices()
        if args.devices is not None:
            if not 1 <= args.devices <= len(devices):
                parser.error(f"--devices must be in [1, {len(devices)}], got {args.devices}")
            devices = devices[: args.devices]
        mesh = data_mesh(devices)
        runs = [
            train_example(
                name,
                steps=args.steps,
                dtype=dtype,
                batch=args.batch,
                image_size=args.image_size,
                seed=args.seed,
                mesh=mesh,
            ).to_dict()
            for name in args.examples
            for dtype in args.dtypes
        ]
        text = json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "device_count": mesh.size,
                "local_device_count": len(mesh.local_devices),
                "runs": runs,
            }
        )
        if args.out is None:
            print(text, flush=True)
        else:
            tmp = f"{args.out}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.out)  # whole or absent
    finally:
        if args.coordinator is not None:
            jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
