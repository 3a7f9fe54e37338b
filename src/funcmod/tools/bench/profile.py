"""What a jitted step spends its time on, measured rather than guessed: the time of each of
XLA's operations, read from a profiler trace of real steps, and the page faults a step takes.

``op_profile`` runs steps under ``jax.profiler.trace`` with a Perfetto trace (plain JSON, no
TensorBoard needed) and sums, per kind of operation, the duration of every trace event that
XLA's CPU runtime tags with an ``hlo_op``. The kind is the HLO instruction's name without its
numeric suffix (``pad_slice_fusion.7`` -> ``pad_slice_fusion``), so the eight slices of an
im2col show as one line. The times are summed over threads: an operation XLA splits across the
cores counts each thread's share, so the total can exceed the wall time of a step, and a share
is a share of the work, not of the wall clock.

``page_faults`` counts the minor page faults of the process over steps (``getrusage``): each
is a fresh 4 KB page the kernel zeroes and maps. XLA:CPU allocates its temporaries afresh on
every execution, so a step whose buffers glibc maps and unmaps each time pays one per page
(``funcmod.host_memory``).
"""

from __future__ import annotations

import gzip
import json
import re
import resource
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TOP_OPS",
    "format_ops",
    "op_kind",
    "op_profile",
    "page_faults",
    "slower_step_measurements",
]

# How many kinds of XLA operation an explanation of a slower step lists, largest first.
TOP_OPS = 5

_SUFFIX = re.compile(r"\.\d+$")


def op_kind(hlo_op: str) -> str:
    """An HLO instruction's name without its numeric suffix: ``dot.3`` -> ``dot``."""
    return _SUFFIX.sub("", hlo_op)


def op_profile(run: Callable[[int], None], steps: int) -> dict[str, Any]:
    """Per kind of XLA operation, its count and milliseconds per step over ``run(steps)``.

    Args:
      run: takes n steps and returns when they are done; compile and warm it beforehand (a
        compile inside the trace adds no XLA operation, only time).
      steps: how many steps to trace, at least 1.

    Returns:
      ``{'steps', 'total_ms', 'ops'}``, ``ops`` a list of ``{'op', 'count', 'ms'}`` per step,
      largest first; ``total_ms`` their sum. RuntimeError when the trace holds no XLA
      operation (a profile of nothing is not a profile).
    """
    import jax

    if steps < 1:
        raise ValueError(f"op_profile needs at least 1 step, got {steps}")
    with tempfile.TemporaryDirectory(prefix="funcmod-profile-") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            run(steps)
        traces = sorted(Path(tmp).rglob("perfetto_trace.json.gz"))
        if len(traces) != 1:
            raise RuntimeError(f"expected one perfetto_trace.json.gz under the trace, got {traces}")
        events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
    micros: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        hlo_op = (event.get("args") or {}).get("hlo_op")
        if event.get("ph") == "X" and hlo_op:
            micros[op_kind(hlo_op)] += float(event.get("dur", 0.0))
            counts[op_kind(hlo_op)] += 1
    if not micros:
        raise RuntimeError("the profiler trace of the steps holds no XLA operation")
    ops = [
        {"op": kind, "count": counts[kind] / steps, "ms": micros[kind] / steps / 1e3}
        for kind in sorted(micros, key=micros.__getitem__, reverse=True)
    ]
    return {"steps": steps, "total_ms": sum(op["ms"] for op in ops), "ops": ops}


def page_faults(run: Callable[[int], None], steps: int) -> float:
    """The process's minor page faults per step over ``run(steps)`` (``steps`` >= 1)."""
    if steps < 1:
        raise ValueError(f"page_faults needs at least 1 step, got {steps}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(steps)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def slower_step_measurements(run: Callable[[int], None], steps: int) -> dict[str, Any]:
    """What the benches explain a slower step with, each over ``run(steps)``: the page faults
    per step, then the ``TOP_OPS`` largest kinds of XLA operation with the total of all:
    ``{'page_faults_per_step', 'op_ms_per_step', 'ops'}``."""
    faults = page_faults(run, steps)
    profile = op_profile(run, steps)
    return {
        "page_faults_per_step": faults,
        "op_ms_per_step": profile["total_ms"],
        "ops": profile["ops"][:TOP_OPS],
    }


def format_ops(ops: list[dict[str, Any]], total_ms: float) -> str:
    """``op_profile``'s operations as one line: ``dot x1 4.61 ms (20%), ...``, each share of
    ``total_ms`` (the profile's total)."""
    return ", ".join(
        f"{op['op']} x{op['count']:g} {op['ms']:.2f} ms ({op['ms'] / total_ms:.0%})" for op in ops
    )
