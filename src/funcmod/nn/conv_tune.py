"""Convolution plans measured on this machine: each pass timed with every lowering that computes
it, the fastest kept. The alternative to ``funcmod.nn.conv_rule``'s rule where this CPU is not
the one the rule was measured on.

The rule's thresholds come from measurements on one machine, and the fastest lowering of a pass
depends on the CPU: on an Intel Xeon with AVX-512 (2026-12-02), lax's kernel gradient was
1.2-2.2x faster than the rule's patches on four of ResNet-18's layers at batch 2, where the
AMD EPYC the rule was measured on had patches 1.3-2.2x faster (``docs/pitfalls.md``, "The rule
on another CPU"). So, like cuDNN's benchmark mode in PyTorch, ``tuned_plans`` measures instead
of predicting::

    from funcmod.nn.conv_tune import PlanCache, tuned_plans

    with tuned_plans(PlanCache("conv_plans.json")):
        state, metrics = train_step(state, batch)  # the first call traces: new shapes are timed

While the context is open, every convolution ``funcmod.nn.conv.conv_general_dilated`` would
lower by the rule takes the plan measured for its shapes, dtype and ``ConvSpec``; a convolution
not yet in the cache is measured when it is traced (``measure_plan``: each pass alone, forward,
input gradient and kernel gradient, with each lowering valid for it, on random data of its
shapes, interleaved over 5 rounds; the median decides). A jitted function traced before the
context keeps the plans of that trace: trace it (call it first) inside. Off CPU the rule's plan
is kept (every plan lowers to ``lax.conv_general_dilated`` there).

Measuring costs compiles and runs: 0.7-1.3 s per convolution on a 2-core CPU, 6.6 s at batch 2
and 13.9 s at batch 32 for a ResNet-18's 11 distinct convolutions at 64x64 (``funcmod bench
--resnet --tune-convs``); a ``PlanCache`` with a path keeps the plans in a JSON file
for the next process on the same machine (it holds the machine's description and starts empty
on another). Every lowering meets the same parity targets against torch
(``tests/test_conv.py``), so a tuned plan changes the speed, not the numbers beyond float
reassociation.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from funcmod.nn.conv import Plan, conv_general_dilated, plan_source
from funcmod.nn.conv_lowerings import NHWC, ConvSpec, chunk_splits_batch, output_size
from funcmod.nn.conv_rule import LOWERINGS, MAX_DIRECT_TAPS, valid_lowerings
from funcmod.timing import cpu_model, steps_per_measurement, time_interleaved

__all__ = [
    "PASSES",
    "PlanCache",
    "candidate_lowerings",
    "machine_key",
    "measure_plan",
    "pass_functions",
    "tuned_plans",
]

PASSES = ("forward", "input_grad", "kernel_grad")  # Plan's fields, in order
_FORMAT = "funcmod.conv_plans/1"

Shape = tuple[int, ...]
# {name: (jitted function, its arguments)} -> {name: median seconds per call}
Timer = Callable[[dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]], dict[str, float]]


def candidate_lowerings(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> tuple[str, ...]:
    """The lowerings ``measure_plan`` times: those valid for the shapes
    (``conv_rule.valid_lowerings``), the direct sum only up to ``MAX_DIRECT_TAPS`` taps (its
    unrolled loop compiles slowly beyond), chunked only where it splits the batch (else it is
    patches)."""
    kh, kw, c_group, _ = rhs_shape
    skip = {"direct"} if kh * kw * c_group > MAX_DIRECT_TAPS else set()
    if not chunk_splits_batch(lhs_shape, rhs_shape, spec):
        skip.add("chunked")
    return tuple(n for n in valid_lowerings(lhs_shape, rhs_shape, spec) if n not in skip)


def machine_key() -> str:
    """What a plan's measurement depends on besides the shapes: the CPU, the cores JAX sees,
    jax and jaxlib."""
    return (
        f"{cpu_model()}; {os.cpu_count()} cores; jax {jax.__version__}; jaxlib {jaxlib.__version__}"
    )


def _interleaved_times(
    calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]],
    rounds: int = 5,
    min_time: float = 0.005,
) -> dict[str, float]:
    """Median seconds per call of each ``fn(*args)``: each called once (compiling), then
    ``funcmod.timing``'s interleaved rounds, each measurement enough calls (at most 100) for
    ``min_time``."""

    def run_of(fn: Callable[..., Any], args: tuple[Any, ...]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                out = fn(*args)
            jax.block_until_ready(out)

        return run

    runs = {name: run_of(fn, args) for name, (fn, args) in calls.items()}
    for run in runs.values():
        run(1)  # compile
    counts = {name: steps_per_measurement(run, 1, min_time, 100) for name, run in runs.items()}
    samples = time_interleaved(runs, counts, rounds)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure_plan(
    lhs_shape: Shape,
    rhs_shape: Shape,
    spec: ConvSpec,
    dtype: Any = jnp.float32,
    *,
    timer: Timer | None = None,
    seed: int = 0,
) -> tuple[Plan, dict[str, dict[str, float]]]:
    """The fastest lowering of each pass of this convolution on this machine.

    Each pass is timed alone (``pass_functions``, which ``funcmod bench --convs`` times too)
    on random operands of the shapes and dtype.

    Args:
      lhs_shape: the input's shape (N, H, W, C).
      rhs_shape: the kernel's shape (kh, kw, C/groups, O).
      spec: the convolution's ``ConvSpec``.
      dtype: the operands' floating dtype.
      timer: ``{name: (fn, args)} -> {name: seconds per call}``; default: compile each, then
        medians over 5 interleaved rounds of at least 5 ms each.
      seed: the random operands' seed.

    Returns:
      the plan and, per pass, the seconds of each candidate lowering.
    """
    # Called while an outer function is traced (a jitted step's first call), arrays made here
    # and the jitted calls on them would be staged into that trace instead of run, and the
    # timer would time tracing. A thread of its own has no trace: there they run, through
    # jit's usual dispatch (under jax.ensure_compile_time_eval they ran too, but each call
    # took 120-160 us longer, by an amount that differed between lowerings and reordered the
    # fast ones). JAX's 64-bit mode is set per thread: the new one gets the caller's.
    x64 = bool(jax.config.jax_enable_x64)

    def measure() -> tuple[Plan, dict[str, dict[str, float]]]:
        with jax.enable_x64(x64):
            return _measure_plan(lhs_shape, rhs_shape, spec, dtype, timer, seed)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(measure).result()


def _measure_plan(
    lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec, dtype: Any, timer: Timer | None, seed: int
) -> tuple[Plan, dict[str, dict[str, float]]]:
    names = candidate_lowerings(lhs_shape, rhs_shape, spec)
    kh, kw, _, out = rhs_shape
    ho = output_size(lhs_shape[1], kh, spec.strides[0], spec.dilation[0], spec.padding[0])
    wo = output_size(lhs_shape[2], kw, spec.strides[1], spec.dilation[1], spec.padding[1])
    rng = np.random.default_rng(seed)
    x, k, ct = (
        jnp.asarray(rng.standard_normal(shape), dtype)
        for shape in (lhs_shape, rhs_shape, (lhs_shape[0], ho, wo, out))
    )

    calls = {key: (fn, (x, k, ct)) for key, fn in pass_functions(spec, names).items()}
    times = (timer or _interleaved_times)(calls)
    missing = sorted(set(calls) - set(times))
    if missing:
        raise ValueError(f"the timer returned no time for {missing}")
    per_pass = {p: {name: float(times[f"{p}:{name}"]) for name in names} for p in PASSES}
    plan = Plan(*(min(per_pass[p], key=per_pass[p].__getitem__) for p in PASSES))
    return plan, per_pass


def pass_functions(spec: ConvSpec, lowerings: tuple[str, ...]) -> dict[str, Callable[..., Any]]:
    """Per ``'pass:lowering'`` (a pass of ``PASSES``, a lowering of ``lowerings``), a jitted
    function of ``(x, k, ct)`` computing that pass alone with that lowering, the other passes
    lax: the forward pass ``conv(x, k)`` (``ct`` unused), the input and the kernel gradient as
    the gradient of ``<conv(x, k), ct>`` for the cotangent ``ct`` (the forward pass and the
    other gradient eliminated as dead code). Every array is an argument: one closed over
    would be a constant, and XLA folds what depends on constants alone into the program."""

    def conv(plan: Plan) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda x, k: conv_general_dilated(
            x,
            k,
            spec.strides,
            spec.padding,
            None,
            spec.dilation,
            NHWC,
            spec.groups,
            precision=spec.precision,
            plan=plan,
        )

    def gradient(plan: Plan, argnum: int) -> Callable[..., jax.Array]:
        return jax.grad(lambda x, k, ct: jnp.vdot(conv(plan)(x, k), ct), argnums=argnum)

    functions = {}
    for name in lowerings:
        forward = conv(Plan(name, "lax", "lax"))
        functions[f"forward:{name}"] = jax.jit(lambda x, k, ct, forward=forward: forward(x, k))
        functions[f"input_grad:{name}"] = jax.jit(gradient(Plan("lax", name, "lax"), 0))
        functions[f"kernel_grad:{name}"] = jax.jit(gradient(Plan("lax", "lax", name), 1))
    return functions


def _key(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec, dtype: Any) -> str:
    """A cache key: the shapes, the spec and the dtype, as a string (a JSON object's key)."""
    return json.dumps(
        [
            list(lhs_shape),
            list(rhs_shape),
            [list(spec.strides), [list(p) for p in spec.padding]],
            list(spec.dilation),
            spec.groups,
            str(spec.precision),
            jnp.dtype(dtype).name,
        ]
    )


class PlanCache:
    """Measured plans by convolution (shapes, ``ConvSpec``, dtype), optionally kept in a JSON
    file.

    With ``path``, an existing file is read on construction (a file written on another machine,
    ``machine_key()``, is ignored: its plans were measured elsewhere; a file that is not a plan
    cache raises ValueError) and rewritten after each new measurement, atomically (a temporary
    file renamed over it). ``measured`` counts the measurements this cache has made.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = None if path is None else Path(path)
        self.machine = machine_key()
        self.plans: dict[str, Plan] = {}
        self.measured = 0
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            ok = data.get("format") == _FORMAT and isinstance(data.get("plans"), dict)
        except (ValueError, AttributeError):
            ok = False
        plans = data["plans"] if ok else {}
        if not ok or not all(
            isinstance(p, list) and len(p) == len(PASSES) and set(p) <= set(LOWERINGS)
            for p in plans.values()
        ):
            raise ValueError(
                f"{path} is not a convolution plan cache (format {_FORMAT!r}: plans of "
                f"{len(PASSES)} lowerings among {list(LOWERINGS)})"
            )
        if data.get("machine") == self.machine:
            self.plans = {key: Plan(*plan) for key, plan in plans.items()}

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"format": _FORMAT, "machine": self.machine, "plans": dict(self.plans)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self.plans)

    def plan(
        self,
        lhs_shape: Shape,
        rhs_shape: Shape,
        spec: ConvSpec,
        dtype: Any,
        timer: Timer | None = None,
    ) -> Plan:
        """The plan for this convolution: the cached one, else ``measure_plan``'s (then
        cached)."""
        key = _key(lhs_shape, rhs_shape, spec, dtype)
        if key not in self.plans:
            self.plans[key], _ = measure_plan(lhs_shape, rhs_shape, spec, dtype, timer=timer)
            self.measured += 1
            self._save()
        return self.plans[key]


@contextlib.contextmanager
def tuned_plans(
    cache: PlanCache | None = None, *, timer: Timer | None = None
) -> Iterator[PlanCache]:
    """While open, convolutions traced without a plan take the plan measured for them on this
    machine (see the module docstring); yields the ``PlanCache`` (a fresh one, in memory, when
    none is given). On a backend other than CPU the rule's plans are kept and nothing is
    measured."""
    cache = PlanCache() if cache is None else cache

    def source(lhs: Any, rhs: Any, spec: ConvSpec, rule_plan: Plan) -> Plan:
        if jax.default_backend() != "cpu":
            return rule_plan
        return cache.plan(tuple(lhs.shape), tuple(rhs.shape), spec, lhs.dtype, timer)

    with plan_source(source):
        yield cache
