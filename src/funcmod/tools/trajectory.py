"""``funcmod trajectory``: every trainable seed example x optimizer x dtype trained in both
frameworks from the same weights; the max relative parameter error over each run."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from funcmod.articles.catalog import EXAMPLES
from funcmod.precision import DTYPES
from funcmod.tools.args import positive_int

__all__ = ["add_parser", "run"]

TRAINABLE = [name for name, ex in EXAMPLES.items() if ex.trainable]


def add_parser(subparsers: Any) -> None:
    """Register ``trajectory`` on the ``funcmod`` command line."""
    p = subparsers.add_parser(
        "trajectory", help="whole training runs of every trainable example, twin vs port"
    )
    p.add_argument("--examples", nargs="+", default=TRAINABLE, choices=TRAINABLE)
    p.add_argument(
        "--optimizers", nargs="+", default=["sgd", "adam", "adamw"], help="sgd, adam, adamw"
    )
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the example's")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the table; exit 1 if any run misses its target, 2 on an unknown optimizer."""
    from funcmod.articles.checks import check_trajectory
    from funcmod.trajectory import OPTIMIZERS

    unknown = [o for o in args.optimizers if o not in OPTIMIZERS]
    if unknown:
        print(
            f"funcmod trajectory: unknown optimizers {unknown}; choose from {list(OPTIMIZERS)}",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    print(f"{'example':16} {'optimizer':9} {'float32':>9} {'float64':>9}  (max rel param error)")
    all_ok = True
    for name in args.examples:
        for opt in args.optimizers:
            cells = []
            for dtype in DTYPES.values():
                r = check_trajectory(
                    name, optimizer=opt, steps=args.steps, dtype=dtype, image_size=args.image_size
                )
                all_ok &= r.ok
                cells.append(f"{r.max_rel:9.2e}{' ' if r.ok else '!'}")
            print(f"{name:16} {opt:9} {' '.join(cells)}", flush=True)
    print(f"{args.steps} steps each, {time.perf_counter() - start:.0f} s; '!' misses its target")
    return 0 if all_ok else 1
