"""One seed example side by side, as the scripts in ``comparisons/`` print it.

``show('MLP')`` prints, one section after the other, each under a labelled rule:

1. the PyTorch twin's source (``funcmod.articles.torch_models.MLP``), then the Flax port's
   (``funcmod.articles.models.MLP``);
2. parity: the forward output and every gradient, in float32 and in float64
   (``funcmod.articles.checks.check_example``);
3. for an example with parameters, ``steps`` training steps of both from the same weights on the
   same batches, in float32 and float64 (``funcmod.articles.checks.check_trajectory``);
4. timing: torch eager against the jitted Flax step, the median seconds per step over
   interleaved rounds (``funcmod.tools.bench``). For an example with parameters the step is a
   training step (MSE against random targets, the same optimizer in both); for one without, it is a
   forward pass.

It returns a JSON-able summary. ``funcmod show NAME`` is the command line every script in
``comparisons/`` runs (``python comparisons/mlp.py --help``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any, TextIO

import jax
import numpy as np

from funcmod.articles.catalog import EXAMPLES, Example, get_example
from funcmod.precision import DTYPES
from funcmod.tools.args import nonnegative_int, positive_int

__all__ = ["add_parser", "run", "script_name", "show", "time_forward"]


def script_name(name: str) -> str:
    """The file name of an example's comparison script: ``SimpleCNN`` -> ``simple_cnn.py``,
    ``MLP`` -> ``mlp.py``."""
    out = []
    for i, ch in enumerate(name):
        starts_word = ch.isupper() and i > 0
        after_lower = starts_word and not name[i - 1].isupper()
        before_lower = starts_word and i + 1 < len(name) and name[i + 1].islower()
        if after_lower or before_lower:
            out.append("_")
        out.append(ch.lower())
    return "".join(out) + ".py"


def _rule(title: str, file: TextIO) -> None:
    print(f"\n{'=' * 8} {title} {'=' * max(4, 88 - len(title))}", file=file)


def _sources(ex: Example, file: TextIO) -> None:
    from funcmod.articles import models, torch_models

    for label, module in (("PyTorch twin", torch_models), ("Flax port", models)):
        cls = getattr(module, ex.name)
        _rule(f"{label}: {module.__name__}.{ex.name}", file)
        print(inspect.getsource(cls).rstrip(), file=file)


def time_forward(
    ex: Example, batch: int, image_size: int | None, rounds: int, min_time: float
) -> dict[str, float]:
    """Median seconds of one forward pass: the twin in torch eager (``no_grad``) and the port's
    jitted ``apply``, timed in interleaved rounds.

    Returns:
      ``{'torch_eager': s, 'flax_jit': s, 'ratio': torch / flax}``.
    """
    import statistics

    import torch

    from funcmod.convert import torch_to_flax
    from funcmod.tools.bench import steps_per_measurement, time_interleaved

    twin = ex.torch_module()
    inputs = ex.make_inputs(np.random.default_rng(0), batch, np.float32, image_size)
    torch_inputs = [torch.from_numpy(a) for a in inputs]
    flax_inputs = [jax.numpy.asarray(a) for a in ex.port_inputs(inputs)]  # images NHWC
    model, variables = ex.flax_module(), torch_to_flax(twin)
    apply = jax.jit(model.apply)

    def run_torch(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                twin(*torch_inputs)

    def run_flax(n: int) -> None:
        for _ in range(n):
            out = apply(variables, *flax_inputs)
        jax.block_until_ready(out)

    runs = {"torch_eager": run_torch, "flax_jit": run_flax}
    for run in runs.values():
        run(3)  # compile and warm up
    steps = {name: steps_per_measurement(run, 1, min_time) for name, run in runs.items()}
    samples = time_interleaved(runs, steps, rounds)
    times = {name: statistics.median(s) for name, s in samples.items()}
    return {**times, "ratio": times["torch_eager"] / times["flax_jit"]}


def show(
    name: str,
    *,
    steps: int = 20,
    batch: int = 4,
    image_size: int | None = None,
    optimizer: str = "adam",
    timing: bool = True,
    bench_batch: int = 32,
    rounds: int = 7,
    min_time: float = 0.05,
    file: TextIO | None = None,
) -> dict[str, Any]:
    """Print one example side by side (see the module docstring) and return the summary.

    Args:
      name: the example (a ``funcmod.articles.EXAMPLES`` key).
      steps: training steps in the trajectory check (0: none).
      batch: batch size of the parity and training checks.
      image_size: height and width of image inputs everywhere (default: the example's own).
      optimizer: ``'sgd'``, ``'adam'`` or ``'adamw'``, for training and timing.
      timing: time the two steps.
      bench_batch: batch size of the timed steps.
      rounds, min_time: timed rounds (the median is reported) and seconds per measurement.
      file: where to print (default stdout).

    Returns:
      ``{'example', 'parity': {dtype: report dict}, 'training': {dtype: report dict},
      'timing': {...}, 'ok'}``; ``ok`` is whether every parity and training check passed.
    """
    from funcmod.articles.checks import check_example, check_trajectory

    ex = get_example(name)
    out = sys.stdout if file is None else file
    print(f"{ex.name}: from the article {ex.article!r}", file=out)
    _sources(ex, out)

    summary: dict[str, Any] = {"example": name, "parity": {}, "training": {}, "timing": None}
    _rule("parity: forward output and gradients, Flax port vs PyTorch twin", out)
    for dtype in DTYPES.values():
        report = check_example(ex, dtype=dtype, batch=batch, image_size=image_size)
        summary["parity"][report.dtype] = report.to_dict()
        print(report, file=out)

    if ex.trainable and steps > 0:
        _rule(f"training: {steps} steps of {optimizer} in both, from the same weights", out)
        for dtype in DTYPES.values():
            run = check_trajectory(
                ex,
                optimizer=optimizer,
                steps=steps,
                dtype=dtype,
                batch=batch,
                image_size=image_size,
            )
            summary["training"][run.dtype] = run.to_dict()
            print(run, file=out)

    if timing:
        summary["timing"] = _timing(ex, optimizer, bench_batch, image_size, rounds, min_time, out)
    checks = [r["ok"] for r in summary["parity"].values()]
    checks += [r["ok"] for r in summary["training"].values()]
    summary["ok"] = all(checks)
    print(f"\n{name}: {'PASS' if summary['ok'] else 'FAIL'}", file=out)
    return summary


def _timing(
    ex: Example,
    optimizer: str,
    batch: int,
    image_size: int | None,
    rounds: int,
    min_time: float,
    out: TextIO,
) -> dict[str, Any]:
    from funcmod.tools.bench import BenchConfig, Case, bench_case, format_seconds

    if not ex.trainable:
        _rule(f"timing: one forward pass, batch {batch} (no parameters to train)", out)
        t = time_forward(ex, batch, image_size, rounds, min_time)
        print(
            f"torch eager {format_seconds(t['torch_eager'])}, jitted Flax apply "
            f"{format_seconds(t['flax_jit'])}; torch / Flax = {t['ratio']:.2f}x (above 1: Flax "
            f"is faster; median of {rounds} rounds)",
            file=out,
        )
        return {"kind": "forward", **t}
    _rule(f"timing: one training step ({optimizer}, MSE), batch {batch}", out)
    config = BenchConfig(
        examples=(ex.name,),
        optimizer=optimizer,
        rounds=rounds,
        min_time=min_time,
        jax_variants=("flax_step",),
        torch_compile=False,
    )
    row = bench_case(Case(ex.name, batch, image_size), config)
    eager = row["best_torch"]["torch_eager"]
    t_torch = row["variants"][eager]["step_s"]
    t_flax = row["variants"]["flax_step"]["step_s"]
    threads = eager.rsplit("_t", 1)[1]
    print(
        f"torch eager {format_seconds(t_torch)} ({threads} threads, the faster of "
        f"{list(config.torch_threads)}), jitted Flax step {format_seconds(t_flax)}; torch / "
        f"Flax = {t_torch / t_flax:.2f}x (above 1: Flax is faster; median of {rounds} rounds). "
        f"funcmod bench also times torch.compile and lax.scan.",
        file=out,
    )
    return {
        "kind": "train_step",
        "torch_eager": t_torch,
        "torch_threads": int(threads),
        "flax_step": t_flax,
        "ratio": t_torch / t_flax,
    }


def add_parser(subparsers: Any) -> None:
    """Register ``show NAME`` on the ``funcmod`` command line (what ``comparisons/*.py`` run)."""
    p = subparsers.add_parser(
        "show", help="one seed example side by side: sources, parity, training, timing"
    )
    p.add_argument("name", choices=list(EXAMPLES), help="the example")
    p.add_argument("--steps", type=nonnegative_int, default=20, help="training steps (0: none)")
    p.add_argument("--batch", type=positive_int, default=4, help="batch of the parity checks")
    p.add_argument("--image-size", type=positive_int, help="image height and width (default: own)")
    p.add_argument("--optimizer", default="adam", help="sgd, adam or adamw (default adam)")
    p.add_argument("--bench-batch", type=positive_int, default=32, help="batch of the timed steps")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed rounds (median)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement")
    p.add_argument("--no-timing", action="store_true", help="skip the timing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``funcmod show NAME``: exit 1 if a parity check fails, 2 on bad input."""
    from funcmod.trajectory import OPTIMIZERS

    if args.optimizer not in OPTIMIZERS:
        print(
            f"funcmod show: --optimizer must be one of {list(OPTIMIZERS)}, got {args.optimizer!r}",
            file=sys.stderr,
        )
        return 2
    summary = show(
        args.name,
        steps=args.steps,
        batch=args.batch,
        image_size=args.image_size,
        optimizer=args.optimizer,
        timing=not args.no_timing,
        bench_batch=args.bench_batch,
        rounds=args.rounds,
        min_time=args.min_time,
    )
    return 0 if summary["ok"] else 1
