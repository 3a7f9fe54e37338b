"""Data parallelism over a ``jax.sharding.Mesh``: the mesh, the batch split along it, the
replicated state, and joining a run of several processes.

One process, many devices::

    mesh = data_mesh()                                # Mesh('data': n_devices)
    state = replicate(state, mesh)                    # every device holds all parameters
    batch = shard_batch((x, y), mesh)                 # each device B / n_devices rows

Several processes (hosts): every process calls ``initialize`` before any other JAX call, then
``data_mesh()`` spans the devices of every process, and each process feeds only its own rows
of every global batch (``process_rows``)::

    initialize("HOST0:1234", num_processes=2, process_id=RANK)
    mesh = data_mesh()
    rows = process_rows(global_batch_size, mesh)
    state, metrics = step(state, (x[rows], y[rows]))  # step = train.make_train_step(..., mesh=mesh)

The train steps of ``funcmod.train`` take ``mesh=`` and do the splitting themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcmod.tree import path_str

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_axis",
    "data_mesh",
    "initialize",
    "process_rows",
    "replicate",
    "shard_batch",
]

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh of shape ``(len(devices),)`` whose axis is named ``axis``.

    Args:
      devices: the devices a batch is split over; default ``jax.devices()``: every device of
        every process (after ``jax.distributed.initialize``, the devices of all hosts).
      axis: the axis name that ``shard_batch`` and the train steps split batches along.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got none")
    return Mesh(np.array(devices, dtype=object), (axis,))


def check_axis(mesh: Mesh, axis: str) -> None:
    """Raise ValueError, naming the mesh's axes, unless ``mesh`` has an axis named ``axis``."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has axes {mesh.axis_names}; expected one named {axis!r}")


def batch_sharding(mesh: Mesh, axis: str, batch_axis: int) -> NamedSharding:
    """Leaves split along their axis ``batch_axis`` over the mesh axis ``axis``."""
    return NamedSharding(mesh, P(*([None] * batch_axis), axis))


def _local_shards(mesh: Mesh, axis: str) -> int:
    """How many of the ``mesh.shape[axis]`` positions along ``axis`` this process's devices
    hold (all of them in a single process)."""
    i = mesh.axis_names.index(axis)
    me = jax.process_index()
    return len({idx[i] for idx, d in np.ndenumerate(mesh.devices) if d.process_index == me})


def process_rows(batch_size: int, mesh: Mesh, axis: str = DATA_AXIS) -> np.ndarray:
    """The rows of a global batch of ``batch_size`` rows that this process feeds.

    In a multi-process run every process builds (or loads) only ``global_batch[rows]`` and passes
    it to ``shard_batch``; in a single process the rows are all of them.

    Returns:
      (batch_size * local_devices / devices,) int64 row indices, increasing: the rows that land
      on this process's devices of the mesh axis ``axis``.

    Raises:
      ValueError: ``batch_size`` does not divide evenly over the devices of ``axis``.
    """
    check_axis(mesh, axis)
    n_devices = mesh.shape[axis]
    if batch_size % n_devices:
        raise ValueError(
            f"global batch size {batch_size} does not divide evenly over the {n_devices} devices "
            f"of mesh axis {axis!r}; use a multiple of {n_devices}"
        )
    index_map = batch_sharding(mesh, axis, 0).addressable_devices_indices_map((batch_size,))
    rows = {r for index in index_map.values() for r in range(*index[0].indices(batch_size))}
    return np.array(sorted(rows), dtype=np.int64)


def shard_batch(batch: Any, mesh: Mesh, *, axis: str = DATA_AXIS, batch_axis: int = 0) -> Any:
    """Split every leaf of ``batch`` along its axis ``batch_axis`` over the mesh axis ``axis``.

    Args:
      batch: a pytree of arrays with the batch on axis ``batch_axis``: (B, ...) leaves for a
        train step, (steps, B, ...) with ``batch_axis=1`` for an epoch. In a single process the
        whole batch; in a multi-process run this process's rows of it (``process_rows``),
        (B * local_devices / devices, ...). A ``jax.Array`` leaf that already has the target
        sharding is passed through as it is.
      mesh: the device mesh.
      axis: the mesh axis to split along.
      batch_axis: the batch axis of every leaf.

    Returns:
      the batch with global ``jax.Array`` leaves, ``NamedSharding(mesh, P(..., axis))``: each of
      the ``mesh.shape[axis]`` devices holds B / devices rows of every leaf.

    Raises:
      ValueError: a leaf's batch size does not divide evenly over the devices (the message names
        both numbers and the leaf), or a leaf has no axis ``batch_axis``.
    """
    check_axis(mesh, axis)
    sharding = batch_sharding(mesh, axis, batch_axis)
    n_devices, local = mesh.shape[axis], _local_shards(mesh, axis)

    def put(keypath: Any, leaf: Any) -> jax.Array:
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        shape = np.shape(leaf)
        where = f"batch leaf {path_str(keypath) or '<root>'} of shape {shape}"
        if len(shape) <= batch_axis:
            raise ValueError(f"{where} has no batch axis {batch_axis}")
        size = shape[batch_axis]
        if size % local:
            if local == n_devices:
                raise ValueError(
                    f"batch size {size} does not divide evenly over {n_devices} devices (mesh "
                    f"axis {axis!r}; {where}): use a batch size that is a multiple of {n_devices}"
                )
            raise ValueError(
                f"this process's batch size {size} does not divide evenly over its {local} "
                f"devices ({n_devices} devices in all on mesh axis {axis!r}; {where}): use a "
                f"global batch size that is a multiple of {n_devices}"
            )
        if not mesh.is_multi_process:
            return jax.device_put(leaf, sharding)
        return jax.make_array_from_process_local_data(sharding, leaf)

    return jax.tree_util.tree_map_with_path(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` (a ``TrainState``, parameters) on every device of ``mesh``.

    Returns global ``jax.Array`` leaves with ``NamedSharding(mesh, P())``; use them in place of
    ``tree`` (they may share its buffers, which a donating step then consumes). In a
    multi-process run every process passes the same values and places its copy on its devices.
    """
    sharding = NamedSharding(mesh, P())
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)

    def put(leaf: Any) -> jax.Array:
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf), np.shape(leaf))

    return jax.tree.map(put, tree)


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
