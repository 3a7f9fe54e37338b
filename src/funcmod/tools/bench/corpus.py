"""``funcmod bench --corpus``: one training step of every ported corpus model (``funcmod.corpus``
through ``funcmod.port``) as a jitted Flax step, in torch eager and with ``torch.compile``.

The step is the same in all three: the loss ``sum(output * cotangent)`` on the model's example
inputs, its gradient, and AdamW (lr 1e-3; ``funcmod.optim.from_torch`` for the Flax step), in
train mode with dropout 0, float32. Each is first called once apart (the compile for the jitted
step and for ``torch.compile``; reported as ``compile_s``), then timed in interleaved rounds
(``funcmod.tools.bench.timing.time_interleaved``), median per step reported.
"""

from __future__ import annotations

import datetime
import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from funcmod.tools.bench.timing import (
    format_seconds,
    steps_per_measurement,
    time_interleaved,
    torch_threads,
)

__all__ = ["CorpusBenchConfig", "render_corpus_markdown", "run_corpus_bench"]


@dataclass(frozen=True)
class CorpusBenchConfig:
    """What ``run_corpus_bench`` times: ``models`` (default: the whole corpus), ``rounds``
    interleaved rounds of about ``min_time`` seconds each, whether ``torch.compile`` runs, and
    torch's intra-op threads (1 by default: on this project's 2-core machine, shared with XLA's
    threads, torch's default 2 threads made the ResNet's eager step 14x slower, 282 ms against
    20 ms)."""

    models: tuple[str, ...] = ()
    rounds: int = 5
    min_time: float = 0.05
    torch_compile: bool = True
    torch_threads: int = 1

    def __post_init__(self) -> None:
        from funcmod.corpus import CORPUS

        unknown = [m for m in self.models if m not in CORPUS]
        if unknown:
            raise ValueError(f"unknown corpus models {unknown}; known: {', '.join(CORPUS)}")
        if self.rounds < 1 or self.min_time <= 0 or self.torch_threads < 1:
            raise ValueError(f"rounds must be >= 1 and min_time > 0, got {self}")


def _torch_step(model: Any, args: tuple, cotangent: Any) -> Callable[[], None]:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        (model(*args) * cotangent).sum().backward()
        opt.step()

    return step


def _jax_step(name: str) -> tuple[Callable[[], None], float]:
    """The ported model's jitted train step, ready to call, and its first call's seconds."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from funcmod.convert import torch_to_flax
    from funcmod.corpus import get_model
    from funcmod.optim import from_torch
    from funcmod.port import port

    entry = get_model(name)
    model = entry.build(**({"dropout": 0.0} if entry.dropout else {})).train()
    args = entry.example_inputs()
    module = port(model, args).module
    variables = torch_to_flax(model)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    tx = from_torch(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    takes_train = "train" in inspect.signature(type(module).__call__).parameters
    train_kw = {"train": True} if takes_train else {}
    mutable = ["batch_stats"] if "batch_stats" in state else False
    xs = [jnp.asarray(a.numpy()) for a in args]
    out_shape = tuple(model(*args).shape)
    cotangent = jnp.asarray(np.random.default_rng(0).standard_normal(out_shape), jnp.float32)

    @jax.jit
    def step(params, state, opt_state, xs):
        def loss(p):
            got = module.apply({"params": p, **state}, *xs, mutable=mutable, **train_kw)
            out, new = got if mutable else (got, {})
            return jnp.sum(out * cotangent), new

        grads, new = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), {**state, **new}, opt_state

    carry = [params, state, tx.init(params)]

    def run() -> None:
        carry[:] = step(*carry, xs)
        jax.block_until_ready(carry[0])

    t0 = time.perf_counter()
    run()
    return run, time.perf_counter() - t0


def _time_model(name: str, config: CorpusBenchConfig) -> dict[str, Any]:
    import torch

    from funcmod.corpus import get_model

    entry = get_model(name)
    jax_run, jax_compile = _jax_step(name)
    runs: dict[str, Callable[[], None]] = {"flax_step": jax_run}
    compile_s = {"flax_step": jax_compile}
    for variant in ("torch_eager", "torch_compile")[: 1 + config.torch_compile]:
        model = entry.build(**({"dropout": 0.0} if entry.dropout else {})).train()
        args = entry.example_inputs()
        cot = torch.from_numpy(
            np.random.default_rng(0).standard_normal(tuple(model(*args).shape)).astype(np.float32)
        )
        step = _torch_step(model, args, cot)
        if variant == "torch_compile":
            torch._dynamo.reset()
            step = torch.compile(step)
        t0 = time.perf_counter()
        step()
        compile_s[variant] = time.perf_counter() - t0
        runs[variant] = step

    def loop(fn: Callable[[], None]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                fn()

        return run

    loops = {k: loop(fn) for k, fn in runs.items()}
    steps = {k: steps_per_measurement(fn, min_time=config.min_time) for k, fn in loops.items()}
    samples = time_interleaved(loops, steps, config.rounds)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {"model": name, "median_s": medians, "compile_s": compile_s}


def run_corpus_bench(
    config: CorpusBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time every model of ``config``; returns ``{'rows', 'config', 'machine', 'started',
    'load_before', 'load_after', 'wall_s'}``, JSON-able, like the other benches' results (the
    machine and its load are what a figure needs to be read)."""
    from funcmod.corpus import CORPUS
    from funcmod.tools.bench.machine import load_average, machine_info

    names: Sequence[str] = config.models or tuple(CORPUS)
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = load_average()
    rows = []
    for name in names:
        with torch_threads(config.torch_threads):
            rows.append(_time_model(name, config))
        if progress:
            m = rows[-1]["median_s"]
            progress(f"{name}: " + ", ".join(f"{k} {format_seconds(v)}" for k, v in m.items()))
    settings = {"rounds": config.rounds, "min_time": config.min_time}
    return {
        "rows": rows,
        "config": {**settings, "torch_threads": config.torch_threads},
        "machine": machine_info(),
        "started": started,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_s": time.perf_counter() - start,
    }


def render_corpus_markdown(result: dict[str, Any]) -> str:
    """One row per model: medians per step, the ratios to the Flax step, first-call seconds."""
    lines = [
        "| model | torch eager | torch.compile | Flax step | eager / step | compile / step "
        "| Flax compile | torch.compile compile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        m, c = row["median_s"], row["compile_s"]
        flax = m["flax_step"]
        tc = m.get("torch_compile")
        cells = [
            row["model"],
            format_seconds(m["torch_eager"]),
            format_seconds(tc) if tc else "-",
            format_seconds(flax),
            f"{m['torch_eager'] / flax:.2f}x",
            f"{tc / flax:.2f}x" if tc else "-",
            f"{c['flax_step']:.1f} s",
            f"{c['torch_compile']:.1f} s" if tc else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
