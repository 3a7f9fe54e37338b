"""``funcmod compare``: every seed example's PyTorch twin and Flax port side by side.

One row per example: parameter count, forward and gradient errors in float32 and float64, and
whether each is within its target (``funcmod.precision.RTOL``). ``--steps N`` adds a training
column: the max relative parameter error over N steps of SGD with momentum, Adam and AdamW (the
worst of the three), torch.optim against its optax translation. ``--json`` prints the same as
JSON. The exit status is 1 when any example fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from funcmod.articles.catalog import EXAMPLES
from funcmod.precision import DTYPES
from funcmod.tools.args import nonnegative_int, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``compare`` on the ``funcmod`` command line."""
    p = subparsers.add_parser(
        "compare", help="parity of every seed example, PyTorch twin vs Flax port"
    )
    p.add_argument("examples", nargs="*", help=f"examples to run (default: all: {list(EXAMPLES)})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="dtypes to check"
    )
    p.add_argument("--batch", type=positive_int, default=4, help="batch size of the random inputs")
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed for weights, inputs and cotangent"
    )
    p.add_argument(
        "--steps",
        type=nonnegative_int,
        default=0,
        help="also train each trainable example N steps with SGD, Adam and AdamW in both "
        "frameworks and report the max parameter error (default 0: no training)",
    )
    p.add_argument(
        "--train-image-size",
        type=nonnegative_int,
        default=8,
        help="height and width of image inputs in the training runs (default 8; 0 for the "
        "examples' own sizes, where float32 ReLU kinks make long runs drift: see "
        "docs/pitfalls.md)",
    )
    p.set_defaults(run=run)


def _compare_example(
    name: str, dtypes: Sequence[str], batch: int, seed: int, steps: int, image_size: int | None
) -> dict[str, Any]:
    from funcmod.articles.checks import check_example
    from funcmod.convert import torch_to_flax
    from funcmod.tree import count_params

    ex = EXAMPLES[name]
    twin = ex.torch_module()
    torch_count = sum(p.numel() for p in twin.parameters())
    flax_count = count_params(torch_to_flax(twin))
    row: dict[str, Any] = {
        "example": name,
        "params_flax": flax_count,
        "params_torch": torch_count,
        "ok": flax_count == torch_count,
        "parity": {},
    }
    for dt in dtypes:
        report = check_example(ex, dtype=DTYPES[dt], batch=batch, seed=seed)
        row["parity"][dt] = {
            "ok": report.ok,
            "rtol": report.rtol,
            "forward_max_abs": report.forward_max_abs,
            "forward_max_rel": report.forward_max_rel,
            "grad_max_abs": report.grad_max_abs,
            "grad_max_rel": report.grad_max_rel,
            "leaves": report.to_dict()["forward"] + report.to_dict()["grads"],
        }
        row["ok"] = row["ok"] and report.ok
    if steps and ex.trainable:
        row["training"] = {
            dt: _train_example(ex, DTYPES[dt], batch, seed, steps, image_size) for dt in dtypes
        }
        row["ok"] = row["ok"] and all(t["ok"] for t in row["training"].values())
    return row


def _train_example(
    ex: Any, dtype: Any, batch: int, seed: int, steps: int, image_size: int | None
) -> dict[str, Any]:
    from funcmod.articles.checks import check_trajectory
    from funcmod.trajectory import OPTIMIZERS

    image_size = image_size if any(ex.input_layouts) else None
    runs = {}
    for opt in OPTIMIZERS:
        report = check_trajectory(
            ex,
            optimizer=opt,
            steps=steps,
            dtype=dtype,
            seed=seed,
            batch=batch,
            image_size=image_size,
        )
        runs[opt] = {
            "ok": report.ok,
            "rtol": report.rtol,
            "max_rel": report.max_rel,
            "final": [d.to_dict() for d in report.final],
            "loss_max_rel": None if report.loss is None else report.loss.max_rel,
        }
    return {
        "ok": all(r["ok"] for r in runs.values()),
        "steps": steps,
        "image_size": image_size,
        "rtol": next(iter(runs.values()))["rtol"],
        "max_rel": max(r["max_rel"] for r in runs.values()),
        "optimizers": runs,
    }


def _print_table(rows: list[dict[str, Any]], dtypes: Sequence[str], steps: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PyTorch twin vs Flax port: max relative error over leaves")
    table.add_column("example", no_wrap=True)
    table.add_column("params", justify="right")
    for dt in dtypes:
        short = dt.replace("float", "f")
        table.add_column(f"fwd {short}", justify="right")
        table.add_column(f"grad {short}", justify="right")
    if steps:
        for dt in dtypes:
            table.add_column(f"train {dt.replace('float', 'f')}", justify="right")
    table.add_column("result")
    for row in rows:
        params = str(row["params_flax"])
        if row["params_flax"] != row["params_torch"]:
            params += f" (torch {row['params_torch']})"
        cells = [row["example"], params]
        for dt in dtypes:
            p = row["parity"][dt]
            cells += [f"{p['forward_max_rel']:.1e}", f"{p['grad_max_rel']:.1e}"]
        if steps:
            training = row.get("training", {})
            cells += [f"{training[dt]['max_rel']:.1e}" if training else "-" for dt in dtypes]
        cells.append("[green]PASS[/]" if row["ok"] else "[red]FAIL[/]")
        table.add_row(*cells)
    console = Console()
    if console.width < 120:  # a pipe or a narrow terminal: keep the numbers readable
        console = Console(width=120)
    console.print(table)
    targets = ", ".join(f"{dt} <= {rows[0]['parity'][dt]['rtol']:g}" for dt in dtypes)
    passed = sum(r["ok"] for r in rows)
    console.print(f"forward/grad targets: {targets}.")
    trained = [r["training"] for r in rows if "training" in r]
    if trained:
        targets = ", ".join(f"{dt} <= {trained[0][dt]['rtol']:g}" for dt in dtypes)
        console.print(
            f"train: max relative parameter error over {steps} steps of SGD+momentum, Adam and "
            f"AdamW (the worst of the three); targets {targets}."
        )
        sizes = {t[dtypes[0]]["image_size"] for t in trained} - {None}
        if sizes:
            n = sizes.pop()
            console.print(
                f"image examples train on {n}x{n} images "
                "(--train-image-size); at 32x32 and 64x64, float32 runs with Adam drift to ~1e-3 "
                "through ReLU inputs that round to opposite sides of zero in the two libraries "
                "(docs/pitfalls.md, 'ReLU kinks in long float32 runs')."
            )
    console.print(f"{passed} of {len(rows)} examples pass.")


def run(args: argparse.Namespace) -> int:
    """``funcmod compare``: exit 0 when every example passes, 1 when one fails, 2 on bad input."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("funcmod compare needs torch: pip install 'funcmod[torch]'", file=sys.stderr)
        return 2
    unknown = [n for n in args.examples if n not in EXAMPLES]
    if unknown:
        print(f"unknown examples {unknown}; choose from {list(EXAMPLES)}", file=sys.stderr)
        return 2
    names = args.examples or list(EXAMPLES)
    image_size = args.train_image_size or None
    rows = [
        _compare_example(n, args.dtypes, args.batch, args.seed, args.steps, image_size)
        for n in names
    ]
    if args.json:
        print(json.dumps({"examples": rows, "ok": all(r["ok"] for r in rows)}, indent=2))
    else:
        _print_table(rows, args.dtypes, args.steps)
    return 0 if all(r["ok"] for r in rows) else 1
