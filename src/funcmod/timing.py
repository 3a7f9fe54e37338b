"""Timing on this machine: interleaved rounds of runs, sized to a minimum time, and the name of
the CPU that measurements depend on.

The one copy of the timer that ``funcmod.nn.conv_tune`` (measuring each convolution's plan)
and the benchmarks (``funcmod.tools.bench``) share. A run is a callable ``run(n)`` that does
its work ``n`` times and returns when it is done (blocking on JAX's asynchronous dispatch).
"""

from __future__ import annotations

import contextlib
import gc
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "no_gc", "steps_per_measurement", "time_interleaved"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` reports."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect once, then keep Python's garbage collector off for the block: a collection in
    the middle of a measurement would be charged to whichever variant happened to run."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def steps_per_measurement(
    run: Callable[[int], None], per_call: int = 1, min_time: float = 0.05, max_steps: int = 200
) -> int:
    """How many steps make one measurement of ``run`` last about ``min_time`` seconds: at
    least ``per_call``, at most ``max_steps`` (rounded up to a multiple of ``per_call``)."""
    t0 = time.perf_counter()
    run(per_call)
    per_step = max((time.perf_counter() - t0) / per_call, 1e-7)
    n = min(max_steps, max(1, round(min_time / per_step)))
    return per_call * math.ceil(n / per_call)


def time_interleaved(
    runs: dict[str, Callable[[int], None]],
    steps: dict[str, int],
    rounds: int,
    around: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per step of every ``runs[name](steps[name])``, one sample per round.

    The runs take turns within a round, starting from a different one each round, so that a
    change in machine load hits all of them alike; the garbage collector is off meanwhile.
    ``around[name]()``, where given, is entered before the timer starts and left after it stops.

    Returns:
      ``{name: [seconds per step, one per round]}``.
    """
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    contexts = {name: (around or {}).get(name, contextlib.nullcontext) for name in names}
    with no_gc():
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                with contexts[name]():
                    t0 = time.perf_counter()
                    runs[name](steps[name])
                    seconds = time.perf_counter() - t0
                samples[name].append(seconds / steps[name])
    return samples
