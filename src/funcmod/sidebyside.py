"""One seed example side by side, as the scripts in ``comparisons/`` print it.

``show('MLP')`` prints, one section after the other, each under a labelled rule:

1. the PyTorch twin's source (``funcmod.torch_models.MLP``), then the Flax port's
   (``funcmod.models.MLP``);
2. parity: the forward output and every gradient, in float32 and in float64
   (``funcmod.parity.check_example``);
3. for an example with parameters, ``steps`` training steps of both from the same weights on the
   same batches, in float32 and float64 (``funcmod.trajectory.check_trajectory``);
4. timing: torch eager against the jitted Flax step, the median seconds per step over
   interleaved rounds (``funcmod.bench``). For an example with parameters the step is a training
   step (MSE against random targets, the same optimizer in both); for one without, it is a
   forward pass.

It returns a JSON-able summary. ``main(name, argv)`` is the command line every script in
``comparisons/`` runs (``python comparisons/mlp.py --help``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import jax
import numpy as np

from funcmod.catalog import EXAMPLES, Example

__all__ = ["main", "script_name", "show", "time_forward"]

_DTYPES = (np.float32, np.float64)


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
    from funcmod import models, torch_models

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

    from funcmod.bench import steps_per_measurement, time_interleaved
    from funcmod.convert import torch_to_flax
    from funcmod.layout import to_channels_last

    twin = ex.torch_module()
    inputs = ex.make_inputs(np.random.default_rng(0), batch, np.float32, image_size)
    torch_inputs = [torch.from_numpy(a) for a in inputs]
    flax_inputs = [
        jax.numpy.asarray(to_channels_last(a, lay))  # NCHW -> NHWC for images
        for a, lay in zip(inputs, ex.input_layouts, strict=True)
    ]
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
      name: the example (``funcmod.EXAMPLES`` key).
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
    from funcmod.parity import check_example

    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; expected one of {list(EXAMPLES)}")
    out = sys.stdout if file is None else file
    ex = EXAMPLES[name]
    print(f"{ex.name}: from the article {ex.article!r}", file=out)
    _sources(ex, out)

    summary: dict[str, Any] = {"example": name, "parity": {}, "training": {}, "timing": None}
    _rule("parity: forward output and gradients, Flax port vs PyTorch twin", out)
    for dtype in _DTYPES:
        report = check_example(ex, dtype=dtype, batch=batch, image_size=image_size)
        summary["parity"][report.dtype] = report.to_dict()
        print(report, file=out)

    if ex.trainable and steps > 0:
        from funcmod.trajectory import check_trajectory

        _rule(f"training: {steps} steps of {optimizer} in both, from the same weights", out)
        for dtype in _DTYPES:
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
    from funcmod.bench import BenchConfig, Case, bench_case, format_seconds

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


def main(name: str, argv: Sequence[str] | None = None) -> int:
    """The command line of ``comparisons/<example>.py``; exits 1 if a parity check fails."""
    parser = argparse.ArgumentParser(
        prog=f"comparisons/{script_name(name)}",
        description=f"{name}: PyTorch twin and Flax port side by side.",
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps (0: none)")
    parser.add_argument("--batch", type=int, default=4, help="batch of the parity checks")
    parser.add_argument("--image-size", type=int, help="image height and width (default: own)")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam")
    parser.add_argument("--bench-batch", type=int, default=32, help="batch of the timed steps")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per measurement")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing")
    args = parser.parse_args(argv)
    summary = show(
        name,
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
