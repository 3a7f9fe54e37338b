"""The timer and its statistics: how a run of steps becomes seconds per step.

A variant is timed as ``run(n)``, a callable that takes ``n`` training steps and returns when
they are done (JAX's asynchronous dispatch included: ``run`` blocks on its last result).
``steps_per_measurement`` sizes ``n`` so that one measurement is long enough for the clock;
``time_interleaved`` takes one sample per variant per round, the variants taking turns so that a
change in machine load hits all of them alike (those three are ``funcmod.timing``'s, shared
with ``funcmod.nn.conv_tune``, and importable from here). ``CompileCounter`` tells whether a
timed block compiled anything (it must not: calls after the first reuse the compiled step).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from funcmod.timing import no_gc, steps_per_measurement, time_interleaved

__all__ = [
    "CompileCounter",
    "format_seconds",
    "median_time",
    "no_gc",
    "steps_per_measurement",
    "time_interleaved",
    "torch_threads",
]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    _BACKEND_COMPILE: "xla_compile_s",
}


class CompileCounter:
    """Counts JAX compilations (``jax.monitoring`` events) while active.

    ``with CompileCounter() as c: ...`` then ``c.compiles`` is the number of XLA compilations in
    the block and ``c.seconds`` the time spent per phase (``trace_s``, ``lower_s``,
    ``xla_compile_s``).
    """

    def __init__(self) -> None:
        self.compiles = 0
        self.seconds = dict.fromkeys(_COMPILE_EVENTS.values(), 0.0)
        self._active = False

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if not self._active or event not in _COMPILE_EVENTS:
            return
        self.seconds[_COMPILE_EVENTS[event]] += duration
        self.compiles += event == _BACKEND_COMPILE

    def __enter__(self) -> CompileCounter:
        self._active = True
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        jax.monitoring.unregister_event_duration_listener(self._listen)


def format_seconds(seconds: float) -> str:
    """``1.23 s``, ``4.56 ms`` or ``789 us``."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, restored after. Set it outside
    the timed calls: changing it rebuilds torch's thread pool, which must not be charged to a
    measurement."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
