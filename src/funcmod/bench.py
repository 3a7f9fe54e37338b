"""``funcmod bench``: the time of one training step of every trainable seed example, in Flax and
in PyTorch, measured side by side in one process.

For each case (example x batch size x image size) it times, per training step (MSE loss against
fixed random targets, the same optimizer on both sides: a ``torch.optim`` optimizer and its
``funcmod.optim.from_torch`` translation, Adam with lr 1e-3 by default):

* ``flax_step``: ``funcmod.train.make_train_step(mse)``, jitted, state donated;
* ``flax_scan``: ``funcmod.train.make_train_epoch(mse)``, K steps in one ``lax.scan`` dispatch,
  the time per call divided by K;
* ``pure_jax``: a hand-written step of the same model, ``jax.jit`` of ``value_and_grad`` and the
  same optax update on a raw params dict, no ``TrainState`` (what funcmod's step is measured
  against: its overhead is ``flax_step / pure_jax - 1``);
* ``torch_eager``: ``zero_grad``, forward, ``mse_loss``, ``backward``, ``optimizer.step()``;
* ``torch_compile``: the same step function wrapped in ``torch.compile`` (default mode; dynamo
  splits it at ``backward()``), compiled afresh for each case (``torch._dynamo.reset()``).

The torch variants run at each of ``torch_threads`` intra-op thread counts (default: torch's
own count and 1), as ``torch_eager_t2``, ``torch_eager_t1``, ... and the ratios use the faster
one. On a machine shared with other work, torch's OpenMP threads wait for each other at every
parallel region whenever one of them is descheduled, and a 2-thread step can take tens of times
longer than a 1-thread one; comparing against the best thread count keeps that from flattering
JAX. The load average before and after the run is recorded.

How it is timed: every variant first runs once (its compile time is that first call, reported
apart: trace, lowering and XLA compile for JAX; dynamo and inductor for torch.compile) and then
warms up. Then, for ``rounds`` rounds, each variant runs ``n`` consecutive steps (``n`` chosen
per variant so that one measurement lasts about ``min_time`` seconds) and is blocked on at the
end; the variants take turns within a round, in an order that rotates from round to round, so
all of them see the same machine load. The step time is the median over rounds of
(measurement time / steps). JAX steps are dispatched asynchronously, as in a training loop;
torch on CPU runs synchronously. Python's garbage collector is off while timing.

FLOPs per step come from XLA's cost analysis of the compiled Flax step
(``jitted.lower(...).compile().cost_analysis()``): the work in XLA's program, recomputation
included. The same count divides every variant's time, so the GFLOP/s columns compare like the
times do; they are set against the machine's matmul peak, measured in the same run (the best of
a large float32 matmul in XLA and in torch).

The result is a JSON-able dict (``run_bench``), rendered by ``render_markdown`` and
``plot_ratios`` and written by ``write_results``; ``evaluate_targets`` checks it against the
speed targets (``TARGETS``). Nothing here asserts a speed: the tests only check the machinery.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcmod.catalog import EXAMPLES, Example
from funcmod.layout import to_channels_last

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_IMAGE_SIZES",
    "JAX_VARIANTS",
    "TARGETS",
    "TORCH_VARIANTS",
    "BenchConfig",
    "CompileCounter",
    "JittedSteps",
    "bench_case",
    "bench_defaults",
    "command",
    "default_cases",
    "evaluate_targets",
    "format_seconds",
    "jitted_steps",
    "machine_info",
    "measure_matmul_peak",
    "plot_ratios",
    "render_markdown",
    "run_bench",
    "steps_per_measurement",
    "time_interleaved",
    "write_results",
]

DEFAULT_BATCH_SIZES = (32, 256)
# Examples with image inputs also run at these sizes, besides their own (SimpleCNN: 32 and 64).
DEFAULT_IMAGE_SIZES = (64,)

JAX_VARIANTS = ("flax_step", "flax_scan", "pure_jax")
TORCH_VARIANTS = ("torch_eager", "torch_compile")  # each timed at every torch_threads count

# (key, description): the speed targets of the issue, evaluated by evaluate_targets.
TARGETS = (
    ("step_beats_eager", "jitted Flax step faster than torch eager in every case"),
    ("small_5x_eager", "jitted Flax step >= 5x faster than torch eager, small models, batch 32"),
    ("step_beats_compile", "jitted Flax step faster than torch.compile in every case"),
    ("overhead_5pct", "funcmod step within 5% of the hand-written pure-JAX step"),
    ("compile_2s", "first call (trace + compile) of every jitted step under 2 s"),
)
SMALL_MODEL_SPEEDUP = 5.0
MAX_OVERHEAD = 0.05
MAX_FIRST_CALL_S = 2.0
SMALL_MODEL_BATCH = 32


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_bench`` measures and how long it spends.

    Attributes:
      examples: example names (trainable ones; default: all trainable examples).
      batch_sizes: batch sizes, each case runs at every one.
      image_sizes: extra image sizes for examples with image inputs (their own always runs).
      optimizer: ``'sgd'``, ``'adam'`` or ``'adamw'``: ``funcmod.trajectory.OPTIMIZERS``.
      rounds: timed rounds per variant; the step time is the median over them.
      min_time: seconds one measurement lasts at least (sets the steps per measurement).
      max_steps: the most steps in one measurement.
      warmup: untimed steps of every variant after its first call.
      scan_steps: steps per ``lax.scan`` call (fewer when the stacked batches would exceed
        ``scan_bytes``; at least 2).
      scan_bytes: the most bytes of stacked batches for the scan variant.
      jax_variants: which of ``JAX_VARIANTS`` to time; ``flax_step`` always runs (the FLOP
        count is its).
      torch_compile: also time ``torch.compile`` (its compile takes tens of seconds per case).
      torch_threads: torch intra-op thread counts to time torch at (default: torch's own count
        and 1); the faster is the baseline.
      matmul_size: n of the n x n float32 matmul that measures the peak.
      seed: seeds the weights, inputs and targets.
    """

    examples: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    image_sizes: tuple[int, ...] = DEFAULT_IMAGE_SIZES
    optimizer: str = "adam"
    rounds: int = 9
    min_time: float = 0.05
    max_steps: int = 200
    warmup: int = 3
    scan_steps: int = 20
    scan_bytes: int = 256 * 2**20
    jax_variants: tuple[str, ...] = JAX_VARIANTS
    torch_compile: bool = True
    torch_threads: tuple[int, ...] = ()
    matmul_size: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        import torch

        from funcmod.trajectory import OPTIMIZERS

        names = self.examples or tuple(n for n, e in EXAMPLES.items() if e.trainable)
        object.__setattr__(self, "examples", tuple(names))
        threads = self.torch_threads or (torch.get_num_threads(), 1)
        object.__setattr__(self, "torch_threads", tuple(dict.fromkeys(int(t) for t in threads)))
        if min(self.torch_threads) < 1:
            raise ValueError(f"torch_threads must be >= 1, got {list(self.torch_threads)}")
        unknown = [n for n in names if n not in EXAMPLES]
        if unknown:
            raise ValueError(f"unknown examples {unknown}; expected names from {list(EXAMPLES)}")
        frozen = [n for n in names if not EXAMPLES[n].trainable]
        if frozen:
            raise ValueError(f"examples {frozen} have no parameters to train; choose trainable")
        wrong = [v for v in self.jax_variants if v not in JAX_VARIANTS]
        if wrong:
            raise ValueError(f"unknown jax_variants {wrong}; expected some of {JAX_VARIANTS}")
        chosen = {"flax_step", *self.jax_variants}
        object.__setattr__(self, "jax_variants", tuple(v for v in JAX_VARIANTS if v in chosen))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        for what, values in (("batch_sizes", self.batch_sizes), ("image_sizes", self.image_sizes)):
            if any(int(v) < 1 for v in values):
                raise ValueError(f"{what} must be positive integers, got {list(values)}")
        if not self.batch_sizes:
            raise ValueError("batch_sizes must not be empty")
        if self.rounds < 1 or self.max_steps < 1 or self.warmup < 0 or self.scan_steps < 2:
            raise ValueError(
                f"need rounds >= 1, max_steps >= 1, warmup >= 0, scan_steps >= 2; got rounds "
                f"{self.rounds}, max_steps {self.max_steps}, warmup {self.warmup}, scan_steps "
                f"{self.scan_steps}"
            )


def bench_defaults() -> dict[str, Any]:
    """``BenchConfig``'s default settings, by field name (for the command line's help)."""
    return {f.name: f.default for f in fields(BenchConfig)}


@dataclass(frozen=True)
class Case:
    """One benchmark case: an example at a batch size (and image size for image inputs)."""

    example: str
    batch: int
    image_size: int | None = None


def _has_images(ex: Example) -> bool:
    return any(layout is not None for layout in ex.input_layouts)


def _own_image_size(ex: Example) -> int:
    image = next(s for s, lay in zip(ex.input_shapes, ex.input_layouts, strict=True) if lay)
    return image[-1]  # (C, H, W) -> W (the examples' images are square)


def default_cases(config: BenchConfig) -> list[Case]:
    """Every example at every batch size; image examples at their own size and the extra ones."""
    cases = []
    for name in config.examples:
        ex = EXAMPLES[name]
        sizes: list[int | None] = [None]
        if _has_images(ex):
            sizes = sorted({_own_image_size(ex), *config.image_sizes})
        for batch in config.batch_sizes:
            cases.extend(Case(name, batch, size) for size in sizes)
    return cases


# --- machine and peak ---------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The backend, the devices, the CPU, and every library version the numbers depend on."""
    import flax
    import jaxlib
    import torch
    import torch._inductor.config as inductor_config

    device = jax.devices()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        # torch.compile's first call is much shorter when inductor's on-disk cache holds the
        # graphs from an earlier run.
        "torch_inductor_fx_graph_cache": bool(inductor_config.fx_graph_cache),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """The machine's float32 matmul rate: an (n, n) @ (n, n) product in XLA and in torch.

    Returns:
      ``{'n', 'flops', 'jax_gflops', 'torch_gflops', 'peak_gflops'}``; the peak is the better
      of the two, the rate the benchmark's GFLOP/s are compared with.
    """
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    matmul = jax.jit(jnp.matmul)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    flops = float(matmul.lower(ja, jb).compile().cost_analysis()["flops"])  # 2 n^3
    jax.block_until_ready(matmul(ja, jb))
    jax_s = _median_time(lambda: jax.block_until_ready(matmul(ja, jb)), repeats)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch.mm(ta, tb)
    torch_s = _median_time(lambda: torch.mm(ta, tb), repeats)
    rates = {"jax_gflops": flops / jax_s / 1e9, "torch_gflops": flops / torch_s / 1e9}
    return {"n": n, "flops": flops, **rates, "peak_gflops": max(rates.values())}


# --- compile events -----------------------------------------------------------------------------

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


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- the variants -------------------------------------------------------------------------------


def _pure_step(
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    inputs: tuple[jax.Array, ...],
    targets: jax.Array,
) -> tuple[Any, Any, jax.Array]:
    """The hand-written training step funcmod's is compared with: a raw params dict."""

    from funcmod.train import mse

    def loss_of(p: Any) -> jax.Array:
        return mse(apply_fn({"params": p}, *inputs), targets)

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


class JittedSteps(NamedTuple):
    """The jitted functions every case reuses (each compiles once per model and shape)."""

    train_step: Callable[..., Any]  # funcmod.train.make_train_step(mse)
    train_epoch: Callable[..., Any]  # funcmod.train.make_train_epoch(mse)
    pure_step: Callable[..., Any]  # _pure_step; apply_fn and tx static, params donated


@functools.cache
def jitted_steps() -> JittedSteps:
    """The benchmark's jitted steps, built on first use and then shared by every case."""
    from funcmod.train import make_train_epoch, make_train_step, mse

    return JittedSteps(
        train_step=make_train_step(mse),
        train_epoch=make_train_epoch(mse),
        pure_step=jax.jit(_pure_step, static_argnums=(0, 1), donate_argnums=(2, 3)),
    )


@dataclass
class _Variant:
    """A way of taking training steps: ``run(n)`` takes n steps (``per_call`` per dispatch)
    and returns when they are done."""

    run: Callable[[int], None]
    per_call: int = 1
    first_call_s: float = 0.0
    compile_detail: dict[str, float] = field(default_factory=dict)


@dataclass
class _Data:
    torch_inputs: list[Any]
    torch_targets: Any
    flax_inputs: tuple[jax.Array, ...]
    flax_targets: jax.Array


def _make_data(ex: Example, case: Case, seed: int) -> _Data:
    import torch

    rng = np.random.default_rng(seed)
    inputs = ex.make_inputs(rng, case.batch, np.float32, case.image_size)
    torch.manual_seed(seed)
    with torch.no_grad():
        out_shape = tuple(ex.torch_module()(*(torch.from_numpy(a) for a in inputs)).shape)
    targets = rng.standard_normal(out_shape).astype(np.float32)  # PyTorch's layout
    return _Data(
        torch_inputs=[torch.from_numpy(a.copy()) for a in inputs],
        torch_targets=torch.from_numpy(targets.copy()),
        flax_inputs=tuple(
            jnp.asarray(to_channels_last(a, lay))  # NCHW -> NHWC for images
            for a, lay in zip(inputs, ex.input_layouts, strict=True)
        ),
        flax_targets=jnp.asarray(to_channels_last(targets, ex.output_layout)),
    )


def _twin_and_optimizer(ex: Example, optimizer: str, seed: int) -> tuple[Any, Any]:
    import torch

    from funcmod.trajectory import OPTIMIZERS

    torch.manual_seed(seed)
    twin = ex.torch_module()
    return twin, OPTIMIZERS[optimizer](twin)


def _torch_step_fn(twin: Any, opt: Any, data: _Data) -> Callable[[], Any]:
    import torch

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(twin(*data.torch_inputs), data.torch_targets)
        loss.backward()
        opt.step()
        return loss

    return step


def _first_call(call: Callable[[], Any]) -> tuple[float, dict[str, float], int]:
    with CompileCounter() as counter:
        t0 = time.perf_counter()
        call()
        seconds = time.perf_counter() - t0
    return seconds, dict(counter.seconds), counter.compiles


def _jax_variants(
    ex: Example, case: Case, data: _Data, config: BenchConfig
) -> tuple[dict[str, _Variant], float]:
    """The JAX variants of ``config.jax_variants``, each already called once (that first call
    traces and compiles); and XLA's FLOP count of one ``flax_step``."""
    from funcmod.convert import torch_to_flax
    from funcmod.optim import from_torch
    from funcmod.train import create_train_state

    twin, opt = _twin_and_optimizer(ex, config.optimizer, config.seed)
    tx = from_torch(opt, twin)
    model = ex.flax_module()
    variables = torch_to_flax(twin)
    batch = (data.flax_inputs, data.flax_targets)
    variants: dict[str, _Variant] = {}

    # flax_step: funcmod.train.make_train_step, the state donated and replaced every step.
    holder = {"state": create_train_state(model, variables, tx)}
    train_step = jitted_steps().train_step

    def step_once() -> jax.Array:
        holder["state"], metrics = train_step(holder["state"], batch)
        return metrics["loss"]

    def run_steps(n: int) -> None:
        for _ in range(n):
            loss = step_once()
        jax.block_until_ready((holder["state"].params, loss))

    seconds, detail, _ = _first_call(lambda: jax.block_until_ready(step_once()))
    variants["flax_step"] = _Variant(run_steps, 1, seconds, detail)
    compiled = train_step.lower(holder["state"], batch).compile()  # the cached executable
    flops = float(compiled.cost_analysis()["flops"])

    if "flax_scan" in config.jax_variants:
        variants["flax_scan"] = _scan_variant(model, variables, tx, batch, config)
    if "pure_jax" in config.jax_variants:
        variants["pure_jax"] = _pure_variant(model, variables, tx, data)
    return variants, flops


def _scan_variant(
    model: Any, variables: Any, tx: optax.GradientTransformation, batch: Any, config: BenchConfig
) -> _Variant:
    """make_train_epoch over K copies of the batch, one dispatch per K steps."""
    from funcmod.train import create_train_state

    batch_bytes = sum(x.nbytes for x in jax.tree.leaves(batch))
    k = max(2, min(config.scan_steps, config.scan_bytes // max(batch_bytes, 1)))
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)).copy(), batch)
    scan_holder = {"state": create_train_state(model, variables, tx)}
    train_epoch = jitted_steps().train_epoch

    def epoch_once() -> jax.Array:
        scan_holder["state"], metrics = train_epoch(scan_holder["state"], stacked)
        return metrics["loss"]

    def run_epochs(n: int) -> None:
        for _ in range(math.ceil(n / k)):
            losses = epoch_once()
        jax.block_until_ready((scan_holder["state"].params, losses))

    seconds, detail, _ = _first_call(lambda: jax.block_until_ready(epoch_once()))
    return _Variant(run_epochs, k, seconds, detail)


def _pure_variant(
    model: Any, variables: Any, tx: optax.GradientTransformation, data: _Data
) -> _Variant:
    """The hand-written step, params and optimizer state as raw pytrees."""
    params = jax.tree.map(jnp.array, variables["params"])
    pure = {"params": params, "opt_state": tx.init(params)}

    def pure_once() -> jax.Array:
        pure["params"], pure["opt_state"], loss = jitted_steps().pure_step(
            model.apply, tx, pure["params"], pure["opt_state"], data.flax_inputs, data.flax_targets
        )
        return loss

    def run_pure(n: int) -> None:
        for _ in range(n):
            loss = pure_once()
        jax.block_until_ready((pure["params"], loss))

    seconds, detail, _ = _first_call(lambda: jax.block_until_ready(pure_once()))
    return _Variant(run_pure, 1, seconds, detail)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _torch_runner(step: Callable[[], Any], threads: int) -> Callable[[int], None]:
    def run(n: int) -> None:
        with _torch_threads(threads):
            for _ in range(n):
                step()

    return run


def _torch_variants(ex: Example, data: _Data, config: BenchConfig) -> dict[str, _Variant]:
    """torch eager (and torch.compile) at every thread count; each first called once at the
    first thread count (for torch.compile that first call compiles)."""
    import torch

    steps = {}
    twin, opt = _twin_and_optimizer(ex, config.optimizer, config.seed)
    steps["torch_eager"] = _torch_step_fn(twin, opt, data)
    if config.torch_compile:
        torch._dynamo.reset()  # a fresh compile per case, no recompile limit reached
        twin_c, opt_c = _twin_and_optimizer(ex, config.optimizer, config.seed)
        steps["torch_compile"] = torch.compile(_torch_step_fn(twin_c, opt_c, data))
    variants: dict[str, _Variant] = {}
    for kind, step in steps.items():
        with _torch_threads(config.torch_threads[0]):
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
        for threads in config.torch_threads:
            variants[f"{kind}_t{threads}"] = _Variant(_torch_runner(step, threads), 1, first)
    return variants


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
    runs: dict[str, Callable[[int], None]], steps: dict[str, int], rounds: int
) -> dict[str, list[float]]:
    """Seconds per step of every ``runs[name](steps[name])``, one sample per round.

    The runs take turns within a round, starting from a different one each round, so that a
    change in machine load hits all of them alike; the garbage collector is off meanwhile.

    Returns:
      ``{name: [seconds per step, one per round]}``.
    """
    names = list(runs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with _no_gc():
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                runs[name](steps[name])
                samples[name].append((time.perf_counter() - t0) / steps[name])
    return samples


def bench_case(case: Case, config: BenchConfig) -> dict[str, Any]:
    """Time every variant of one case; see the module docstring for the method.

    Returns:
      a JSON-able dict: the case, ``flops`` per step, and per variant ``step_s`` (median),
      ``step_s_quartiles``, ``steps_per_measurement``, ``first_call_s`` (and its JAX
      breakdown), ``gflops``; ``ratios`` between them; ``recompiles`` during the timed rounds.
    """
    ex = EXAMPLES[case.example]
    data = _make_data(ex, case, config.seed)
    jax_variants, flops = _jax_variants(ex, case, data, config)
    variants = {**jax_variants, **_torch_variants(ex, data, config)}
    for v in variants.values():  # warm-up, untimed
        v.run(v.per_call * max(1, math.ceil(config.warmup / v.per_call)))
    steps = {
        name: steps_per_measurement(v.run, v.per_call, config.min_time, config.max_steps)
        for name, v in variants.items()
    }
    with CompileCounter() as counter:
        samples = time_interleaved({n: v.run for n, v in variants.items()}, steps, config.rounds)
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
    return {
        "example": case.example,
        "batch": case.batch,
        "image_size": case.image_size,
        "small": not _has_images(ex),
        "flops": flops,
        "scan_steps": variants["flax_scan"].per_call if "flax_scan" in variants else None,
        "variants": results,
        "best_torch": best,
        "ratios": _ratios(results, best),
        "recompiles": counter.compiles,
    }


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
    Flax variant's) and funcmod's overhead over the hand-written step."""
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
    return ratios


# --- the run ------------------------------------------------------------------------------------


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
    load_before = _load()
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
        "load_after": _load(),
        "wall_s": time.perf_counter() - start,
    }
    result["targets"] = evaluate_targets(result)
    return result


def _case_label(row: dict[str, Any]) -> str:
    size = f" {row['image_size']}x{row['image_size']}" if row["image_size"] else ""
    return f"{row['example']} b{row['batch']}{size}"


def _progress_line(row: dict[str, Any]) -> str:
    v, r = row["variants"], row["ratios"]
    parts = [f"{name} {format_seconds(v[name]['step_s'])}" for name in v]
    return f"{_case_label(row)}: " + ", ".join(parts) + f"; eager/step {r['eager_over_step']:.2f}x"


# --- targets ------------------------------------------------------------------------------------


def _ratio_values(rows: list[dict[str, Any]], key: str) -> list[tuple[float, str]]:
    return [(r["ratios"][key], _case_label(r)) for r in rows if key in r["ratios"]]


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the result against ``TARGETS``.

    Returns:
      one dict per target: ``target``, ``description``, ``threshold``, ``ok`` (None when no case
      measures it), ``worst`` (the value furthest from the target) with ``worst_case``, and
      ``failing``, the cases that miss it.
    """
    rows = result["cases"]
    checks: dict[str, tuple[list[tuple[float, str]], float, Callable[[float], bool], bool]] = {
        # key: ((value, case label) pairs, threshold, passes(value), higher_is_better)
        "step_beats_eager": (
            _ratio_values(rows, "eager_over_step"),
            1.0,
            lambda v: v > 1.0,
            True,
        ),
        "small_5x_eager": (
            _ratio_values(
                [r for r in rows if r["small"] and r["batch"] == SMALL_MODEL_BATCH],
                "eager_over_step",
            ),
            SMALL_MODEL_SPEEDUP,
            lambda v: v >= SMALL_MODEL_SPEEDUP,
            True,
        ),
        "step_beats_compile": (
            _ratio_values(rows, "compile_over_step"),
            1.0,
            lambda v: v > 1.0,
            True,
        ),
        "overhead_5pct": (
            _ratio_values(rows, "step_overhead"),
            MAX_OVERHEAD,
            lambda v: v <= MAX_OVERHEAD,
            False,
        ),
        "compile_2s": (
            [
                (r["variants"][name]["first_call_s"], f"{_case_label(r)} {name}")
                for r in rows
                for name in JAX_VARIANTS
                if name in r["variants"]
            ],
            MAX_FIRST_CALL_S,
            lambda v: v < MAX_FIRST_CALL_S,
            False,
        ),
    }
    out = []
    for key, description in TARGETS:
        values, threshold, passes, higher_is_better = checks[key]
        entry: dict[str, Any] = {"target": key, "description": description}
        entry["threshold"] = threshold
        if not values:
            entry.update(ok=None, worst=None, worst_case=None, failing=[])
        else:
            value, label = min(values) if higher_is_better else max(values)
            failing = [label for v, label in values if not passes(v)]
            entry.update(ok=not failing, worst=value, worst_case=label, failing=failing)
        out.append(entry)
    return out


# --- rendering ----------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """``1.23 s``, ``4.56 ms`` or ``789 us``."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _fmt_ratio(ratios: dict[str, float], key: str) -> str:
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def _best_cell(row: dict[str, Any], kind: str) -> str:
    name = row["best_torch"].get(kind)
    if name is None:
        return "-"
    threads = name.rsplit("_t", 1)[1]
    return f"{format_seconds(row['variants'][name]['step_s'])} ({threads}t)"


def render_markdown(result: dict[str, Any]) -> str:
    """The result as markdown: the machine, the per-case table and the targets."""
    m, peak, cfg = result["machine"], result["peak"], result["config"]
    rows = result["cases"]
    has_compile = any("torch_compile" in r["best_torch"] for r in rows)
    threads = ", ".join(str(t) for t in cfg["torch_threads"])
    lines = [
        f"Measured {result['started']} on {m['cpu']} ({m['cores']} cores), JAX backend "
        f"`{m['backend']}` ({m['device']}); jax {m['versions']['jax']}, flax "
        f"{m['versions']['flax']}, optax {m['versions']['optax']}, torch "
        f"{m['versions']['torch']}. Load average (1, 5, 15 min) before / after: "
        f"{_fmt_load(result)}.",
        "",
        f"One training step: MSE against random targets, float32, {cfg['optimizer']} "
        f"(`torch.optim` and its `from_torch` translation). Median over {cfg['rounds']} "
        f"interleaved rounds. torch timed at {threads} threads, the faster shown (`2t`: 2 "
        f"threads). Matmul peak ({peak['n']}x{peak['n']} float32, best of XLA "
        f"{peak['jax_gflops']:.1f} and torch {peak['torch_gflops']:.1f}): "
        f"{peak['peak_gflops']:.1f} GFLOP/s.",
        "",
    ]
    head = ["case", "torch eager"] + (["torch.compile"] if has_compile else [])
    head += ["Flax step", "Flax scan", "pure JAX", "eager / step"]
    head += ["compile / step"] if has_compile else []
    head += ["eager / scan", "overhead", "GFLOP/s step (peak)", "1st call step/scan/pure"]
    head += ["torch.compile 1st call"] if has_compile else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        v, q = r["variants"], r["ratios"]
        cells = [_case_label(r), _best_cell(r, "torch_eager")]
        cells += [_best_cell(r, "torch_compile")] if has_compile else []
        cells += [format_seconds(v[name]["step_s"]) if name in v else "-" for name in JAX_VARIANTS]
        cells.append(_fmt_ratio(q, "eager_over_step"))
        cells += [_fmt_ratio(q, "compile_over_step")] if has_compile else []
        cells += [
            _fmt_ratio(q, "eager_over_scan"),
            f"{q['step_overhead']:+.1%}" if "step_overhead" in q else "-",
            f"{v['flax_step']['gflops']:.2f} ({v['flax_step']['peak_fraction']:.1%})",
            " / ".join(f"{v[n]['first_call_s']:.2f}" if n in v else "-" for n in JAX_VARIANTS)
            + " s",
        ]
        if has_compile:
            name = r["best_torch"].get("torch_compile")
            cells.append(f"{v[name]['first_call_s']:.1f} s" if name else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Times are per training step; a ratio above 1 means the Flax step is faster. Flax "
        "scan: `make_train_epoch`, several steps per dispatch. Overhead: funcmod's step over a "
        "hand-written `jax.jit(value_and_grad + optax)` step. GFLOP/s: XLA's FLOP count of the "
        "compiled step over its median time. 1st call: trace, compile and one step "
        "(torch.compile's is short when inductor's on-disk cache is warm from an earlier run).",
        "",
        "| target | result | worst case |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        status = {True: "met", False: "**not met**", None: "not measured"}[t["ok"]]
        worst = "-" if t["worst"] is None else f"{t['worst']:.3g} ({t['worst_case']})"
        lines.append(f"| {t['description']} | {status} | {worst} |")
    return "\n".join(lines) + "\n"


def _fmt_load(result: dict[str, Any]) -> str:
    def fmt(load: list[float] | None) -> str:
        return "n/a" if load is None else " ".join(f"{x:.2f}" for x in load)

    return f"{fmt(result['load_before'])} / {fmt(result['load_after'])}"


def plot_ratios(result: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of the speed-ups per case (log scale, 1x marked), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cases"]
    series = [("eager_over_step", "torch eager / Flax step")]
    if any("compile_over_step" in r["ratios"] for r in rows):
        series.append(("compile_over_step", "torch.compile / Flax step"))
    series.append(("eager_over_scan", "torch eager / Flax scan"))
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.7 * len(rows) + 2), 5))
    for i, (key, label) in enumerate(series):
        values = [r["ratios"].get(key, np.nan) for r in rows]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("torch time / Flax time (log scale; > 1: Flax faster)")
    ax.set_xticks(x, [_case_label(r) for r in rows], rotation=60, ha="right", fontsize=8)
    machine = result["machine"]
    ax.set_title(
        f"funcmod bench: {machine['cpu']}, {machine['cores']} cores, JAX {machine['backend']}",
        pad=28,
    )
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(result: dict[str, Any], outdir: str | Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``outdir`` (created)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": outdir / "bench.json", "markdown": outdir / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(result))
    paths["png"] = plot_ratios(result, outdir / "bench.png")
    return paths


def command(args: Any) -> int:
    """``funcmod bench``: build the config from the parsed arguments, run, print, write.

    Prints markdown (or JSON with ``--json``) to stdout and one line per case to stderr; with
    ``--out DIR`` also writes ``bench.json``, ``bench.md`` and ``bench.png`` there. Returns 0,
    or 2 for invalid arguments: speed targets are reported, not enforced.
    """
    given = {
        "examples": tuple(args.examples),
        "batch_sizes": tuple(args.batch_sizes) if args.batch_sizes else None,
        "image_sizes": tuple(args.image_sizes) if args.image_sizes is not None else None,
        "optimizer": args.optimizer,
        "rounds": args.rounds,
        "min_time": args.min_time,
        "torch_threads": tuple(args.torch_threads) if args.torch_threads else None,
        "torch_compile": not args.no_torch_compile,
    }
    try:
        config = BenchConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        print(f"funcmod bench: {e}", file=sys.stderr)
        return 2
    result = run_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else render_markdown(result))
    if args.out:
        for path in write_results(result, args.out).values():
            print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m funcmod.bench``: the same as ``funcmod bench``."""
    from funcmod.cli import main as cli_main

    return cli_main(["bench", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
