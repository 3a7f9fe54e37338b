"""The torch variants of one case, each a ``Variant`` already called once:

* ``torch_eager``: ``zero_grad``, forward, ``mse_loss``, ``backward``, ``optimizer.step()``;
* ``torch_compile``: the same step function wrapped in ``torch.compile`` (default mode; dynamo
  splits it at ``backward()``), compiled afresh for each case (``torch._dynamo.reset()``).

Each is timed at every one of ``config.torch_threads`` intra-op thread counts, as
``torch_eager_t2``, ``torch_eager_t1``, ..., and the ratios use the fastest. The reason: on a
machine shared with other work, torch's OpenMP threads wait for each other at every parallel
region whenever one of them is descheduled, and a step at several threads can take many times
longer than at one; comparing against the best thread count keeps that from flattering JAX.
torch on CPU runs synchronously, so ``run(n)`` returns when the steps are done.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from funcmod.articles.catalog import Example
from funcmod.tools.bench.config import BenchConfig
from funcmod.tools.bench.timing import torch_threads
from funcmod.tools.bench.variants import CaseData, Variant, twin_and_optimizer

__all__ = ["make_torch_variants"]


def _torch_step_fn(twin: Any, opt: Any, data: CaseData) -> Callable[[], Any]:
    import torch

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(twin(*data.torch_inputs), data.torch_targets)
        loss.backward()
        opt.step()
        return loss

    return step


def _torch_runner(step: Callable[[], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            step()

    return run


def make_torch_variants(ex: Example, data: CaseData, config: BenchConfig) -> dict[str, Variant]:
    """torch eager (and torch.compile) at every thread count; each first called once at the
    first thread count (for torch.compile that first call compiles)."""
    import torch

    steps = {}
    twin, opt = twin_and_optimizer(ex, config.optimizer, config.seed)
    steps["torch_eager"] = _torch_step_fn(twin, opt, data)
    if config.torch_compile:
        torch._dynamo.reset()  # a fresh compile per case, no recompile limit reached
        twin_c, opt_c = twin_and_optimizer(ex, config.optimizer, config.seed)
        steps["torch_compile"] = torch.compile(_torch_step_fn(twin_c, opt_c, data))
    variants: dict[str, Variant] = {}
    for kind, step in steps.items():
        with torch_threads(config.torch_threads[0]):
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
        for threads in config.torch_threads:
            variants[f"{kind}_t{threads}"] = Variant(
                _torch_runner(step), 1, first, around=functools.partial(torch_threads, threads)
            )
    return variants
