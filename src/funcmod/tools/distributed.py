"""``funcmod distributed``: data-parallel training of the seed examples, on many devices, many
processes, and against PyTorch's ``DistributedDataParallel``.

    # 1 device vs 8: every trainable example, float32 and float64, 200 steps
    XLA_FLAGS=--xla_force_host_platform_device_count=8 funcmod distributed parity

    # one run on all local devices, parameters and losses as JSON on stdout
    funcmod distributed train --examples MLP --dtypes float32 --steps 200

    # JAX on 1 and on N devices and DDP over 2 processes, side by side
    XLA_FLAGS=--xla_force_host_platform_device_count=8 funcmod distributed ddp

Several processes, several hosts: every process runs the same command with its own
``--process-id``; process 0's ``HOST:PORT`` is the coordinator (``funcmod.sharding.initialize``)::

    funcmod distributed train --coordinator HOST0:1234 --num-processes 2 --process-id 0  # host 0
    funcmod distributed train --coordinator HOST0:1234 --num-processes 2 --process-id 1  # host 1

Both print the same parameters: they are replicated, every process holds a full copy. On one
machine ``HOST0`` is ``127.0.0.1`` and each process can fake several CPU devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. The N CPU devices must be asked for
before JAX starts, hence the environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from funcmod.precision import DTYPES, rtol
from funcmod.tools.args import positive_int
from funcmod.tools.data_parallel import TRAINABLE

__all__ = ["add_parser", "run"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", nargs="+", default=TRAINABLE, choices=TRAINABLE)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--batch", type=positive_int, default=16, help="global batch size")
    parser.add_argument("--image-size", type=positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def add_parser(subparsers: Any) -> None:
    """Register ``distributed {parity,train,ddp}`` on the ``funcmod`` command line."""
    p = subparsers.add_parser("distributed", help="data-parallel training: devices, processes, DDP")
    sub = p.add_subparsers(dest="distributed_command", required=True)
    p_parity = sub.add_parser("parity", help="1 device vs every local device, per example")
    _common(p_parity)
    p_parity.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p_parity.set_defaults(run=_parity)
    p_train = sub.add_parser("train", help="train; print parameters and losses as JSON")
    _common(p_train)
    p_train.add_argument("--coordinator", help="HOST:PORT of process 0 (several processes)")
    p_train.add_argument("--num-processes", type=positive_int, default=1)
    p_train.add_argument("--process-id", type=int, default=0)
    p_train.add_argument("--timeout", type=int, default=300, help="seconds to wait for peers")
    p_train.add_argument("--devices", type=positive_int, help="use the first N devices")
    p_train.add_argument(
        "--out", help="write the JSON to this file (gloo's log lines go to stdout too)"
    )
    p_train.set_defaults(run=_train)
    p_ddp = sub.add_parser("ddp", help="JAX on 1 and N devices and torch DDP, side by side")
    _common(p_ddp)
    p_ddp.add_argument("--world-size", type=positive_int, default=2, help="DDP processes")
    p_ddp.add_argument("--timeout", type=float, default=600.0, help="seconds for DDP")
    p_ddp.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p_ddp.set_defaults(run=_ddp)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the ``distributed`` subcommand ``args`` was parsed for."""
    return args.run(args)


def _parity(args: argparse.Namespace) -> int:
    """1 device vs all local devices; exit 1 if a run misses its target or a one-device mesh
    is not bitwise the plain step."""
    import jax

    from funcmod.tools.data_parallel import device_parity

    start = time.perf_counter()
    rows = device_parity(
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
    return 0 if all(r["ok"] and r["one_device_bitwise"] for r in rows) else 1


def _train(args: argparse.Namespace) -> int:
    """One run over every device (of every process); the JSON goes to stdout or ``--out``."""
    import jax

    from funcmod.sharding import data_mesh, initialize
    from funcmod.tools.data_parallel import train_example

    if args.coordinator is not None:
        if args.devices is not None:
            print("--devices is for one process; several processes use all", file=sys.stderr)
            return 2
        initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.timeout)
    elif args.num_processes != 1:
        print("--num-processes > 1 needs --coordinator HOST:PORT", file=sys.stderr)
        return 2
    try:
        devices = jax.devices()
        if args.devices is not None:
            if args.devices > len(devices):
                print(
                    f"--devices must be in [1, {len(devices)}], got {args.devices}", file=sys.stderr
                )
                return 2
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


def _ddp(args: argparse.Namespace) -> int:
    """JAX on one device, JAX on every local device and DDP, from the same weights on the same
    global batches; the max relative parameter error of each pair and DDP's first gradient
    against the gradient of the whole first batch. Exit 1 if any misses its target."""
    import jax

    from funcmod.sharding import data_mesh
    from funcmod.tools.data_parallel import (
        compare_runs,
        global_batch_grads,
        initial_variables,
        train_example,
    )
    from funcmod.tools.ddp import ddp_train
    from funcmod.tree import compare_trees

    n = jax.local_device_count()
    start = time.perf_counter()
    common = dict(batch=args.batch, image_size=args.image_size, steps=args.steps, seed=args.seed)
    ddp = ddp_train(
        args.examples,
        dtypes=args.dtypes,
        world_size=args.world_size,
        timeout_s=args.timeout,
        **common,
    )
    mesh = data_mesh()
    rows = []
    for name in args.examples:
        for dtype in args.dtypes:
            variables = initial_variables(
                name, dtype=dtype, seed=args.seed, image_size=args.image_size
            )
            one = train_example(name, dtype=dtype, variables=variables, **common)
            many = train_example(name, dtype=dtype, variables=variables, mesh=mesh, **common)
            ddp_run = ddp[(name, dtype)]
            target = rtol("parity", dtype)
            grad = compare_trees(
                ddp_run.first_grads,
                global_batch_grads(
                    name, dtype=dtype, batch=args.batch, image_size=args.image_size, seed=args.seed
                ),
                rtol=target,
            )
            cells = {
                "n_vs_1": compare_runs(many, one),
                "ddp_vs_n": compare_runs(ddp_run, many),
                "ddp_vs_1": compare_runs(ddp_run, one),
            }
            rows.append(
                {
                    "example": name,
                    "dtype": dtype,
                    "devices": n,
                    **{k: v["max_rel"] for k, v in cells.items()},
                    "ddp_grad": max(d.max_rel for d in grad),
                    "target": target,
                    "ok": all(v["ok"] for v in cells.values()) and all(d.ok for d in grad),
                }
            )
    if args.json:
        print(json.dumps(rows))
    else:
        print(
            f"JAX 1 device, JAX {n} devices, DDP {args.world_size} processes: max relative "
            f"parameter error after {args.steps} Adam steps (batch {args.batch})"
        )
        print(
            f"{'example':16} {'dtype':8} {f'{n} vs 1':>9} {f'DDP vs {n}':>9} {'DDP vs 1':>9} "
            f"{'DDP grad':>9} {'target':>7}"
        )
        for r in rows:
            print(
                f"{r['example']:16} {r['dtype']:8} {r['n_vs_1']:9.2e} {r['ddp_vs_n']:9.2e} "
                f"{r['ddp_vs_1']:9.2e} {r['ddp_grad']:9.2e} {r['target']:7.0e}"
                f"{'' if r['ok'] else '  MISSES TARGET'}"
            )
        print(f"{time.perf_counter() - start:.0f} s")
    return 0 if all(r["ok"] for r in rows) else 1
