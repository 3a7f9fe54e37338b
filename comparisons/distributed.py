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

Targets: ``funcmod.precision.RTOL['parity']``; the script exits 1 if any run misses its target.
It is ``funcmod distributed ddp`` with 8 CPU devices: XLA_FLAGS is set here before JAX starts.
"""

import os
import sys

DEVICES = 8

if __name__ == "__main__":
    flag = f"--xla_force_host_platform_device_count={DEVICES}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

    from funcmod.tools.cli import main

    sys.exit(main(["distributed", "ddp", *sys.argv[1:]]))
