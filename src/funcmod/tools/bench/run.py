"""The run: every variant of every case timed side by side in one process.

How a case is timed (``bench_case``): every variant first runs once (its compile time is that
first call, reported apart: trace, lowering and XLA compile for JAX; dynamo and inductor for
torch.compile) and then warms up. Then, for ``rounds`` rounds, each variant runs ``n``
consecutive steps (``n`` chosen per variant so that one measurement lasts about ``min_time``
seconds) and is blocked on at the end; the variants take turns within a round, in an order that
rotates from round to round, so all of them see the same machine load. The step time is the
median over rounds of (measurement time / steps). Python's garbage collector is off while
timing.

FLOPs per step come from XLA's cost analysis of the compiled Flax step; the same count divides
every variant's time, so the GFLOP/s columns compare like the times do. ``run_bench`` sets them
against the machine's matmul peak, measured in the same run, and records the load average before
and after.

Where the Flax step is slower than torch eager, ``bench_case`` then measures why, after the
timed rounds (so that nothing it does disturbs them): the page faults per Flax step and a
profile of XLA's operations over as many steps as one measurement took (``profile``).
"""

from __future__ import annotations

import datetime
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from funcmod.articles.catalog import EXAMPLES
from funcmod.tools.bench.config import (
    TORCH_VARIANTS,
    BenchConfig,
    Case,
    case_label,
    default_cases,
    has_images,
)
from funcmod.tools.bench.jax_variants import make_jax_variants
from funcmod.tools.bench.machine import load_average, machine_info, measure_matmul_peak
from funcmod.tools.bench.profile import slower_step_measurements
from funcmod.tools.bench.targets import evaluate_targets
from funcmod.tools.bench.timing import (
    CompileCounter,
    format_seconds,
    steps_per_measurement,
    time_interleaved,
)
from funcmod.tools.bench.torch_variants import make_torch_variants
from funcmod.tools.bench.variants import Variant, make_data

__all__ = ["bench_case", "run_bench"]


def bench_case(case: Case, config: BenchConfig) -> dict[str, Any]:
    """Time every variant of one case; see the module docstring for the method.

    Returns:
      a JSON-able dict: the case, ``flops`` per step, and per variant ``step_s`` (median),
      ``step_s_quartiles``, ``steps_per_measurement``, ``first_call_s`` (and its JAX
      breakdown), ``gflops``; ``best_torch`` and the ``ratios`` between the variants;
      ``recompiles`` during the timed rounds (0 unless a jitted step failed to reuse its
      compile); ``xla_bytes``, the bytes the compiled Flax step's operations access; and
      ``why_slower``: None when the Flax step is at least as fast as torch eager, else
      ``{'page_faults_per_step', 'op_ms_per_step', 'ops'}`` (``_why_slower``).
    """
    ex = EXAMPLES[case.example]
    data = make_data(ex, case, config.seed)
    jax_variants, cost = make_jax_variants(ex, data, config)
    flops = cost.flops
    variants = {**jax_variants, **make_torch_variants(ex, data, config)}
    steps = {}
    for name, v in variants.items():
        with v.around():
            v.run(v.per_call * max(1, math.ceil(config.warmup / v.per_call)))  # warm-up
            steps[name] = steps_per_measurement(
                v.run, v.per_call, config.min_time, config.max_steps
            )
    with CompileCounter() as counter:
        samples = time_interleaved(
            {n: v.run for n, v in variants.items()},
            steps,
            config.rounds,
            around={n: v.around for n, v in variants.items()},
        )
    results = {}
    for name, v in variants.items():
        median = statistics.median(samples[name])
        q = np.quantile(samples[name], [0.25, 0.75])
        results[name] = {
            "step_s": median,
            "step_s_quartiles": [float(q[0]), float(q[1])],
            "steps_per_measurement": steps[name],
            "steps_per_call": v.per_call,
            "first_call_s": v.first_call_s,
            **({"first_call_detail_s": v.compile_detail} if v.compile_detail else {}),
            "gflops": flops / median / 1e9,
        }
    best = _best_torch(results)
    ratios = _ratios(results, best)
    slower = ratios.get("eager_over_step", 1.0) < 1.0
    return {
        "example": case.example,
        "batch": case.batch,
        "image_size": case.image_size,
        "small": not has_images(ex),
        "flops": flops,
        "xla_bytes": cost.bytes_accessed,
        "scan_steps": variants["flax_scan"].per_call if "flax_scan" in variants else None,
        "variants": results,
        "best_torch": best,
        "ratios": ratios,
        "recompiles": counter.compiles,
        "why_slower": _why_slower(variants["flax_step"], steps["flax_step"]) if slower else None,
    }


def _why_slower(step: Variant, steps: int) -> dict[str, Any]:
    """``profile.slower_step_measurements`` of the Flax step, in the variant's context."""
    with step.around():
        return slower_step_measurements(step.run, steps)


def _best_torch(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per torch variant kind, the name of its fastest thread count (``torch_eager_t1``)."""
    best = {}
    for kind in TORCH_VARIANTS:
        timed = [name for name in results if name.startswith(f"{kind}_t")]
        if timed:
            best[kind] = min(timed, key=lambda name: results[name]["step_s"])
    return best


def _ratios(results: dict[str, dict[str, Any]], best: dict[str, str]) -> dict[str, float]:
    """Speed-ups (the torch variant's median step time, at its best thread count, over the
    Flax variant's) and the overheads of funcmod's step and bound step over the hand-written
    step."""
    t = {name: r["step_s"] for name, r in results.items()}
    t.update({kind: t[name] for kind, name in best.items()})
    pairs = {
        "eager_over_step": ("torch_eager", "flax_step"),
        "eager_over_scan": ("torch_eager", "flax_scan"),
        "compile_over_step": ("torch_compile", "flax_step"),
        "compile_over_scan": ("torch_compile", "flax_scan"),
        "compile_over_eager": ("torch_compile", "torch_eager"),
    }
    ratios = {key: t[a] / t[b] for key, (a, b) in pairs.items() if a in t and b in t}
    if "pure_jax" in t:
        ratios["step_overhead"] = t["flax_step"] / t["pure_jax"] - 1.0
        if "flax_bound" in t:
            ratios["bound_overhead"] = t["flax_bound"] / t["pure_jax"] - 1.0
    return ratios


def run_bench(
    config: BenchConfig | None = None,
    cases: Sequence[Case] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every case (default: ``default_cases(config)``) and return the whole result.

    Args:
      config: what to measure; ``BenchConfig()`` by default.
      cases: the cases, instead of every example at every batch and image size.
      progress: called with one line per finished case (e.g. ``print`` to stderr).

    Returns:
      ``{'machine', 'config', 'peak', 'cases', 'targets', 'load_before', 'load_after',
      'started', 'wall_s'}``, all JSON-able.
    """
    config = config or BenchConfig()
    cases = list(cases) if cases is not None else default_cases(config)
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = load_average()
    machine = machine_info()
    peak = measure_matmul_peak(config.matmul_size)
    rows = []
    for case in cases:
        row = bench_case(case, config)
        for r in row["variants"].values():
            r["peak_fraction"] = r["gflops"] / peak["peak_gflops"]
        rows.append(row)
        if progress is not None:
            progress(_progress_line(row))
    result = {
        "machine": machine,
        "config": asdict(config),
        "peak": peak,
        "cases": rows,
        "started": started,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_s": time.perf_counter() - start,
    }
    result["targets"] = evaluate_targets(result)
    return result


def _progress_line(row: dict[str, Any]) -> str:
    v, r = row["variants"], row["ratios"]
    parts = [f"{name} {format_seconds(v[name]['step_s'])}" for name in v]
    return f"{case_label(row)}: " + ", ".join(parts) + f"; eager/step {r['eager_over_step']:.2f}x"
