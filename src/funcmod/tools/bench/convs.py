"""``funcmod bench --convs``: the conv micro-benchmark, every CPU lowering of
``funcmod.nn.conv`` against torch eager on the convolution shapes of real networks.

The grid (``default_grid``) is the distinct convolutions of a ResNet-18 and of a MobileNetV3
(large; a representative subset of its bottlenecks: expansion, depthwise 3x3 and 5x5 at both
strides, projection, squeeze-excite), at 64x64 and 224x224 inputs, batch 2 (other inputs and
batches: ``default_grid(((64, 32),))``, ``--conv-inputs 64x32``). For each row it times,
interleaved in rounds like ``funcmod bench``:

* each pass alone with each lowering valid for the shape (``conv_rule.valid_lowerings``):
  ``fwd`` (the convolution), ``dx`` (the input gradient alone: a VJP with a fixed cotangent,
  the forward pass dead-code eliminated) and ``dk`` (the kernel gradient alone);
* forward + backward (the output and both gradients of a given cotangent, ``jax.vjp``: what
  torch computes) with the rule's plan, with lax for every pass, and in
  torch eager (``conv2d`` then ``backward``, at each of ``torch_threads``, the fastest kept).

Each lowering's forward + backward is reported as the sum of its three passes; the rule's
plan and lax's are also measured whole. A row's report marks the rule's pick per pass and says
whether it is the fastest (within ``NOISE``, a relative margin) per pass.

Two guards keep that verdict from reporting noise as a miss. A lowering that is the same
program as another for the row is timed once: ``chunked`` where one chunk holds the whole batch
is ``patches`` (``same_as``). And the rule's pick of each pass is timed a second time, a second
jitted copy of the same program in the same rounds (``repeat:fwd`` and so on): how far apart
the two measured (``repeat_spread``) is the row's own noise, and the report counts the passes
whose pick lost by more than that apart from those that lost by more than ``NOISE``.

With ``tune`` (``--tune-convs``), each row's plan is also measured first by
``funcmod.nn.conv_tune`` (``measure_plan``), and the report says the same of its picks against
the grid's own times, a second measurement: how far a measured plan holds. No test times
anything: the numbers are this command's.
"""

from __future__ import annotations

import datetime
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcmod.tools.bench.timing import (
    format_seconds,
    steps_per_measurement,
    time_interleaved,
    torch_threads,
)

__all__ = [
    "NOISE",
    "ConvBenchConfig",
    "ConvRow",
    "bench_conv_row",
    "default_grid",
    "run_conv_bench",
]

PASSES = ("fwd", "dx", "dk")
# A lowering within this relative margin of the fastest counts as tied with it.
NOISE = 0.10
# Direct sums with more taps than this are not timed (their unrolled loop compiles slowly).
MAX_TIMED_DIRECT_TAPS = 64
# The times' name of the rule's pick timed a second time ('repeat:fwd', ...).
REPEAT = "repeat"


@dataclass(frozen=True)
class ConvRow:
    """One convolution: ``net`` names where it comes from; input (batch, c_in, size, size),
    kernel ``kernel`` x ``kernel``, ``stride``, ``groups``, padding ``kernel // 2``."""

    net: str
    batch: int
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    groups: int = 1

    def label(self) -> str:
        g = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"{self.net} b{self.batch} {self.c_in}->{self.c_out} {self.size}x{self.size} "
            f"k{self.kernel} s{self.stride}{g}"
        )


def _resnet18(r: int) -> list[tuple[str, int, int, int, int, int, int]]:
    """(layer, c_in, c_out, size, kernel, stride, groups) of a ResNet-18 at input r x r."""
    rows = [("conv1", 3, 64, r, 7, 2, 1), ("layer1", 64, 64, r // 4, 3, 1, 1)]
    size, c = r // 4, 64
    for i, width in enumerate((128, 256, 512), start=2):
        rows += [
            (f"layer{i}.down", c, width, size, 3, 2, 1),
            (f"layer{i}", width, width, size // 2, 3, 1, 1),
            (f"layer{i}.skip", c, width, size, 1, 2, 1),
        ]
        size, c = size // 2, width
    return rows


def _mobilenet_v3(r: int) -> list[tuple[str, int, int, int, int, int, int]]:
    """A representative subset of MobileNetV3-Large's convolutions at input r x r."""
    h2, h4, h16, h32 = r // 2, r // 4, r // 16, r // 32
    return [
        ("stem", 3, 16, r, 3, 2, 1),
        ("dw3", 16, 16, h2, 3, 1, 16),
        ("expand", 16, 64, h2, 1, 1, 1),
        ("dw3.s2", 64, 64, h2, 3, 2, 64),
        ("project", 64, 24, h4, 1, 1, 1),
        ("dw5.s2", 72, 72, h4, 5, 2, 72),
        ("se", 72, 24, 1, 1, 1, 1),
        ("dw3", 240, 240, h16, 3, 1, 240),
        ("dw5", 672, 672, h16, 5, 1, 672),
        ("last", 160, 960, max(h32, 1), 1, 1, 1),
    ]


def default_grid(inputs: Sequence[tuple[int, int]] = ((64, 2), (224, 2))) -> list[ConvRow]:
    """Every distinct conv of ``_resnet18`` and ``_mobilenet_v3`` at each (input size, batch)."""
    rows: list[ConvRow] = []
    for r, batch in inputs:
        for net, layers in (("resnet18", _resnet18(r)), ("mobilenetv3", _mobilenet_v3(r))):
            for layer, c_in, c_out, size, k, s, g in layers:
                row = ConvRow(f"{net}@{r}:{layer}", batch, c_in, c_out, size, k, s, g)
                if row not in rows:
                    rows.append(row)
    return rows


@dataclass(frozen=True)
class ConvBenchConfig:
    """How long the conv bench spends: ``rounds`` interleaved rounds, each measurement at least
    ``min_time`` seconds and at most ``max_steps`` calls; torch at ``torch_threads`` (default:
    torch's own count and 1); ``seed`` for the inputs; ``tune``: also each row's measured plan
    (``funcmod.nn.conv_tune.measure_plan``)."""

    rounds: int = 5
    min_time: float = 0.02
    max_steps: int = 50
    torch_threads: tuple[int, ...] = ()
    seed: int = 0
    tune: bool = False

    def __post_init__(self) -> None:
        import torch

        threads = self.torch_threads or (torch.get_num_threads(), 1)
        object.__setattr__(self, "torch_threads", tuple(dict.fromkeys(int(t) for t in threads)))
        if self.rounds < 1 or self.max_steps < 1 or min(self.torch_threads) < 1:
            raise ValueError(
                f"need rounds >= 1, max_steps >= 1, torch_threads >= 1; got rounds {self.rounds}, "
                f"max_steps {self.max_steps}, torch_threads {list(self.torch_threads)}"
            )


# The grid's names of the passes of funcmod.nn.conv_tune.PASSES.
_PASS_NAMES = {"forward": "fwd", "input_grad": "dx", "kernel_grad": "dk"}


def _jax_runs(
    row: ConvRow, x: jax.Array, k: jax.Array, ct: jax.Array
) -> tuple[dict, Any, Any, dict[str, float], dict[str, str]]:
    """The jitted calls of one row, each as ``run(n)``; its ``ConvSpec`` and the rule's plan;
    XLA's cost analysis of the rule's compiled forward + backward (``flops``, ``bytes``
    accessed); and the lowerings left untimed because they are another's program here
    (``{'chunked': 'patches'}`` where one chunk holds the whole batch)."""
    from funcmod.nn.conv import Plan, conv_general_dilated, conv_plan
    from funcmod.nn.conv_lowerings import chunk_splits_batch
    from funcmod.nn.conv_rule import valid_lowerings
    from funcmod.nn.conv_tune import pass_functions

    p = row.kernel // 2
    args = ((row.stride, row.stride), ((p, p), (p, p)), None, None, ("NHWC", "HWIO", "NHWC"))

    def conv(plan: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
        return lambda x, k: conv_general_dilated(x, k, *args, row.groups, plan=plan)

    def forward_and_backward(plan: Any) -> Callable[..., Any]:
        # what torch's conv2d + backward(ct) computes: y, and both VJPs of ct. Not
        # value_and_grad of <y, ct>: XLA fuses the convolution into that scalar reduction,
        # which made the depthwise rows 2x slower than y and the VJPs computed apart.
        def run(x: jax.Array, k: jax.Array, ct: jax.Array) -> Any:
            y, vjp = jax.vjp(conv(plan), x, k)
            return y, *vjp(ct)

        return run

    spec, rule = conv_plan(x, k, *args, row.groups)
    valid = valid_lowerings(x.shape, k.shape, spec)
    taps = row.kernel * row.kernel * (row.c_in // row.groups)
    if taps > MAX_TIMED_DIRECT_TAPS:
        valid = tuple(name for name in valid if name != "direct")
    same = {}
    if "chunked" in valid and not chunk_splits_batch(x.shape, k.shape, spec):
        same["chunked"] = "patches"  # one chunk: chunked returns patches(x, k) itself
        valid = tuple(name for name in valid if name != "chunked")
    # Each pass alone, as funcmod.nn.conv_tune measures it, renamed 'lowering:fwd' and so on;
    # the rule's pick of each pass once more, from a second jit of the same function.
    jitted: dict[str, Callable[..., Any]] = {}
    for key, fn in pass_functions(spec, valid).items():
        pass_, name = key.split(":")
        jitted[f"{name}:{_PASS_NAMES[pass_]}"] = fn
    picked = [same.get(name, name) for name in rule]
    again = pass_functions(spec, tuple(dict.fromkeys(picked)))
    for (pass_, short), name in zip(_PASS_NAMES.items(), picked, strict=True):
        jitted[f"{REPEAT}:{short}"] = again[f"{pass_}:{name}"]
    for label, plan in (("rule", rule), ("lax", Plan("lax", "lax", "lax"))):
        jitted[f"{label}:fwd+bwd"] = jax.jit(forward_and_backward(plan))
    fns = {name: functools.partial(fn, x, k, ct) for name, fn in jitted.items()}

    def runner(fn: Callable[[], Any]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(n):
                out = fn()
            jax.block_until_ready(out)

        return run

    cost = jitted["rule:fwd+bwd"].lower(x, k, ct).compile().cost_analysis()
    xla = {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}
    return {name: runner(fn) for name, fn in fns.items()}, spec, rule, xla, same


def _torch_run(row: ConvRow, x: np.ndarray, k: np.ndarray, ct: np.ndarray) -> Callable[[int], None]:
    """torch eager's conv2d and its backward with cotangent ``ct``, as ``run(n)``, at whatever
    intra-op thread count is set (``timing.torch_threads`` sets it outside the timed calls)."""
    import torch

    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    tk = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))).requires_grad_(True)
    tct = torch.from_numpy(np.ascontiguousarray(ct.transpose(0, 3, 1, 2)))
    p = row.kernel // 2

    def run(n: int) -> None:
        for _ in range(n):
            y = torch.nn.functional.conv2d(tx, tk, stride=row.stride, padding=p, groups=row.groups)
            y.backward(tct)
            tx.grad = tk.grad = None

    return run


def _measure(runs: dict[str, Callable[[int], None]], config: ConvBenchConfig) -> tuple[dict, dict]:
    """First-call seconds and median seconds per call of each run, interleaved in rounds."""
    first = {}
    for name, run in runs.items():  # compile and warm up, untimed
        t0 = time.perf_counter()
        run(1)
        first[name] = time.perf_counter() - t0
        run(1)
    steps = {
        name: steps_per_measurement(run, 1, config.min_time, config.max_steps)
        for name, run in runs.items()
    }
    samples = time_interleaved(runs, steps, config.rounds)
    return first, {name: statistics.median(s) for name, s in samples.items()}


def bench_conv_row(row: ConvRow, config: ConvBenchConfig) -> dict[str, Any]:
    """Time one row (see the module docstring). Returns a JSON-able dict: the row, the rule's
    ``plan``, ``times`` (median seconds per call by ``lowering:pass``), per pass the
    ``fastest`` lowering and whether the rule's pick is within ``NOISE`` of it, and the
    ratios ``torch / rule`` and ``lax / rule`` of forward + backward."""
    from funcmod.nn.conv_tune import measure_plan

    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal((row.batch, row.size, row.size, row.c_in)).astype(np.float32)
    k = rng.standard_normal((row.kernel, row.kernel, row.c_in // row.groups, row.c_out))
    k = (k / np.sqrt(k[..., 0].size)).astype(np.float32)
    p = row.kernel // 2
    out = (row.size + 2 * p - row.kernel) // row.stride + 1
    ct = rng.standard_normal((row.batch, out, out, row.c_out)).astype(np.float32)
    runs, spec, plan, xla, same = _jax_runs(row, jnp.asarray(x), jnp.asarray(k), jnp.asarray(ct))
    tuned = measure_plan(x.shape, k.shape, spec, jnp.float32)[0] if config.tune else None
    torch_run = _torch_run(row, x, k, ct)
    # JAX's runs interleaved with torch at its first thread count, then torch at each other
    # count on its own (the thread count changes only between measurements).
    first_t = config.torch_threads[0]
    with torch_threads(first_t):
        first, times = _measure({**runs, f"torch_t{first_t}:fwd+bwd": torch_run}, config)
    for t in config.torch_threads[1:]:
        with torch_threads(t):
            more_first, more = _measure({f"torch_t{t}:fwd+bwd": torch_run}, config)
        times.update(more)
        first.update(more_first)
    torch_names = [n for n in times if n.startswith("torch_t")]
    best_torch = min(torch_names, key=times.__getitem__)
    times["torch:fwd+bwd"] = times[best_torch]
    lowerings = sorted({n.split(":")[0] for n in times if n.endswith(":fwd")} - {REPEAT})
    for name in lowerings:
        times[f"{name}:sum"] = sum(times[f"{name}:{p}"] for p in PASSES)
    spreads = _repeat_spreads(plan, times, same)
    picks = _picks(plan, times, lowerings, same, spreads)
    rule_t = times["rule:fwd+bwd"]
    # The convolution's own work: 2 * N * Ho * Wo * O * (kh * kw * C / groups) FLOPs per pass,
    # and the operands each pass must read or write at least once (x, k, y, ct, dx, dk).
    conv_flops = 3 * 2 * ct.size * row.kernel * row.kernel * (row.c_in // row.groups)
    min_bytes = 4 * (2 * x.size + 2 * k.size + 2 * ct.size)
    cost = {**xla, "conv_flops": float(conv_flops), "min_bytes": float(min_bytes)}
    return {
        **asdict(row),
        "label": row.label(),
        "plan": list(plan),
        **(
            {
                "tuned_plan": list(tuned),
                "tuned_picks": _picks(tuned, times, lowerings, same, spreads),
            }
            if tuned
            else {}
        ),
        "lowerings": lowerings,
        "same_as": same,
        "times": times,
        "best_torch": best_torch,
        "first_call_s": first,
        "picks": picks,
        "torch_over_rule": times["torch:fwd+bwd"] / rule_t,
        "lax_over_rule": times["lax:fwd+bwd"] / rule_t,
        "xla_cost": cost,
        "why_slower": _why_slower(cost, rule_t, times["torch:fwd+bwd"]),
    }


def _repeat_spreads(rule: Any, times: dict[str, float], same: dict[str, str]) -> dict[str, float]:
    """Per pass, how far apart the rule's pick and its second timing measured: the larger
    time over the smaller, minus 1 (a lowering of ``same`` timed as its twin)."""
    spreads = {}
    for pass_, chosen in zip(PASSES, rule, strict=True):
        pair = (times[f"{REPEAT}:{pass_}"], times[f"{same.get(chosen, chosen)}:{pass_}"])
        spreads[pass_] = max(pair) / min(pair) - 1
    return spreads


def _picks(
    plan: Any,
    times: dict[str, float],
    lowerings: list[str],
    same: dict[str, str],
    spreads: dict[str, float],
) -> dict[str, Any]:
    """Per pass: the plan's lowering, the fastest timed one, the ratio of the two, whether the
    plan's is within ``NOISE`` of the fastest, the row's ``repeat_spread`` (``_repeat_spreads``)
    and whether the plan's is within that spread of the fastest. A lowering of ``same`` takes
    its twin's time."""
    picks = {}
    for pass_, chosen in zip(PASSES, plan, strict=True):
        timed = {name: times[f"{name}:{pass_}"] for name in lowerings}
        fastest = min(timed, key=timed.__getitem__)
        chosen_t = timed.get(same.get(chosen, chosen))
        ratio = None if chosen_t is None else chosen_t / timed[fastest]
        spread = spreads[pass_]
        picks[pass_] = {
            "rule": chosen,
            "fastest": fastest,
            "rule_over_fastest": ratio,
            "ok": ratio is not None and ratio <= 1 + NOISE,
            "repeat_spread": spread,
            "within_repeat": ratio is not None and ratio <= 1 + spread,
        }
    return picks


def _why_slower(cost: dict[str, float], rule_s: float, torch_s: float) -> str | None:
    """Where the rule's plan is slower than torch, what XLA's cost analysis of its compiled
    forward + backward says: its FLOPs against the convolution's, the bytes it moves against
    the operands', and the rates both reach on the convolution's FLOPs. None when not slower."""
    if rule_s <= torch_s:
        return None
    flops_x = cost["flops"] / cost["conv_flops"]
    bytes_x = cost["bytes"] / cost["min_bytes"]
    rates = (
        f"{cost['conv_flops'] / rule_s / 1e9:.1f} GFLOP/s vs torch "
        f"{cost['conv_flops'] / torch_s / 1e9:.1f}"
    )
    if bytes_x >= 4.0:
        return f"memory traffic: XLA moves {bytes_x:.1f}x the operands' bytes; {rates}"
    if flops_x >= 1.5:
        return f"extra work: XLA computes {flops_x:.1f}x the convolution's FLOPs; {rates}"
    return f"slower kernels at the same work ({flops_x:.1f}x FLOPs, {bytes_x:.1f}x bytes); {rates}"


def run_conv_bench(
    config: ConvBenchConfig | None = None,
    rows: Sequence[ConvRow] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every row (default ``default_grid()``) timed; ``{'machine', 'config', 'rows',
    'started', 'load_before', 'load_after', 'wall_s'}``, JSON-able."""
    from funcmod.tools.bench.machine import load_average, machine_info

    config = config or ConvBenchConfig()
    rows = list(rows) if rows is not None else default_grid()
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = load_average()
    results = []
    for row in rows:
        r = bench_conv_row(row, config)
        results.append(r)
        if progress is not None:
            progress(
                f"{r['label']}: rule {'/'.join(r['plan'])} "
                f"{format_seconds(r['times']['rule:fwd+bwd'])}, torch/rule "
                f"{r['torch_over_rule']:.2f}x, lax/rule {r['lax_over_rule']:.2f}x"
            )
    return {
        "machine": machine_info(),
        "config": asdict(config),
        "rows": results,
        "started": started,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_s": time.perf_counter() - start,
    }
