"""Data-parallel training side by side: JAX on one device, JAX on N devices (one jitted program,
batch split along a mesh axis) and PyTorch ``DistributedDataParallel`` over 2 processes (gloo,
127.0.0.1), every trainable seed example, Adam (lr 1e-3), from the same weights on the same
global batches.

    python comparisons/distributed.py                  # 200 steps, float32 and float64
    python comparisons/distributed.py --examples MLP --dtypes float32 --steps 50 --json

Columns, each the max relative parameter error after the run (``funcmod.tree.compare_trees``:
per leaf ``max|a - b| / max|b|``, the max over leaves):

* ``N vs 1``: JAX on N devices against JAX on one device;
* ``DDP vs N``: DDP against JAX on N devices, the data-parallel runs of both frameworks;
* ``DDP vs 1``: DDP against JAX on one device;
* ``DDP grad``: DDP's first gradient (after its all-reduce and division by the world size)
  against the gradient of the mean loss over the whole first global batch: equal, because each
  rank's loss is the mean over its equal share of the rows.

Targets: 1e-5 in float32, 1e-12 in float64; the script exits 1 if any run misses its target.
The N CPU devices come from ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set here
before JAX is imported (``--devices``, default 8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python comparisons/distributed.py")
    parser.add_argument("--examples", nargs="+", help="default: every trainable example")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--devices", type=int, default=8, help="JAX CPU devices")
    parser.add_argument("--world-size", type=int, default=2, help="DDP processes")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for DDP")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if "jax" in sys.modules:
        raise RuntimeError("run this as a script: XLA_FLAGS must be set before JAX is imported")
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

    import jax

    from funcmod.distributed import (
        TARGETS,
        TRAINABLE,
        compare_runs,
        ddp_train,
        global_batch_grads,
        initial_variables,
        train_example,
    )
    from funcmod.train import data_mesh
    from funcmod.tree import compare_trees

    if jax.local_device_count() != args.devices:
        raise RuntimeError(
            f"expected {args.devices} CPU devices, JAX sees {jax.local_device_count()}"
        )
    examples = args.examples or TRAINABLE
    unknown = sorted(set(examples) - set(TRAINABLE))
    if unknown:
        raise SystemExit(f"unknown examples {unknown}; expected some of {TRAINABLE}")
    start = time.perf_counter()
    common = dict(batch=args.batch, image_size=args.image_size, steps=args.steps)
    ddp = ddp_train(
        examples,
        dtypes=args.dtypes,
        world_size=args.world_size,
        timeout_s=args.timeout,
        **common,
    )
    mesh = data_mesh()
    rows = []
    for name in examples:
        for dtype in args.dtypes:
            variables = initial_variables(name, dtype=dtype, image_size=args.image_size)
            one = train_example(name, dtype=dtype, variables=variables, **common)
            many = train_example(name, dtype=dtype, variables=variables, mesh=mesh, **common)
            run = ddp[(name, dtype)]
            grad = compare_trees(
                run.first_grads,
                global_batch_grads(name, dtype=dtype, batch=args.batch, image_size=args.image_size),
                rtol=TARGETS[dtype],
            )
            cells = {
                "n_vs_1": compare_runs(many, one),
                "ddp_vs_n": compare_runs(run, many),
                "ddp_vs_1": compare_runs(run, one),
            }
            rows.append(
                {
                    "example": name,
                    "dtype": dtype,
                    **{k: v["max_rel"] for k, v in cells.items()},
                    "ddp_grad": max(d.max_rel for d in grad),
                    "target": TARGETS[dtype],
                    "ok": all(v["ok"] for v in cells.values()) and all(d.ok for d in grad),
                }
            )
    if args.json:
        print(json.dumps(rows))
    else:
        n = args.devices
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


if __name__ == "__main__":
    raise SystemExit(main())
