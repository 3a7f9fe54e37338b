"""PyTorch's ``DistributedDataParallel`` twin of ``funcmod.tools.data_parallel``'s runs: the same
examples, weights and global batches, trained by ``world_size`` CPU processes over gloo on
127.0.0.1, each rank on its contiguous block of rows of every global batch."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from funcmod.articles.catalog import EXAMPLES
from funcmod.precision import float_dtype, x64_for
from funcmod.tools.data_parallel import (
    LR,
    Run,
    example_data,
    initial_variables,
    max_rel,
    trainable_example,
)
from funcmod.tree import leaves_with_paths

__all__ = ["ddp_train", "free_port"]


def free_port() -> int:
    """A TCP port that is free now on every interface (the OS picks it), for a coordinator that
    will listen on it: servers such as JAX's coordinator bind all interfaces, not only
    127.0.0.1. Another process can still take it before the server binds; use it only where a
    retry is cheap (the DDP runs here meet through a file instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _DdpJob:
    example: str
    dtype: str
    state_dict: dict[str, np.ndarray]
    inputs: tuple[np.ndarray, ...]  # each (steps, batch, ...), PyTorch layout
    targets: np.ndarray  # (steps, batch, ...)


def _ddp_worker(
    rank: int, world_size: int, store: str, jobs: list[_DdpJob], out_dir: str, timeout_s: float
) -> None:
    """One DDP rank: trains every job on its contiguous block of rows of each global batch.

    The ranks meet through ``store``, a file in ``out_dir`` (no TCP port to pick and lose to
    another process between choosing it and binding it).
    """
    import datetime

    import torch
    import torch._dynamo  # before init_process_group: see the finally below
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    model = opt = None
    trained = False
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
        trained = True
    finally:
        # Tear the gloo group down here, with every rank done, not at interpreter exit, where
        # gloo's worker threads would be destroyed in no fixed order while the peer may be gone
        # (the process then aborts: "terminate called without an active exception"). The last
        # DDP wrapper's reducer holds the group, so it goes first; the barrier keeps a rank from
        # closing its connections while a peer still finishes its last all-reduce (only after
        # success: a failed rank must not wait for a peer that is not coming). torch._dynamo,
        # which DDP imports, keeps references to the group that exists when it is first
        # imported, hence its import above: otherwise the group and its threads would outlive
        # destroy_process_group().
        model = opt = None
        if trained:
            dist.barrier()
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
            ex, dt = trainable_example(name), float_dtype(dtype)
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
            args=(world_size, os.path.join(out_dir, "store"), jobs, out_dir, timeout_s),
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
            if any(max_rel(p, params[0]) != 0.0 for p in params[1:]):
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
