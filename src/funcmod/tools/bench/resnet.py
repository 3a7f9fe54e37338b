"""``funcmod bench --resnet``: a ResNet-18 trained one step at a time, written twice by hand,
in plain PyTorch (``TorchResNet18``) and with ``funcmod.nn`` layers (``FlaxResNet18``).

Both are torchvision's ResNet-18 layout: a 7x7 stride-2 stem, BatchNorm, ReLU, a 3x3 stride-2
max pool, four stages of two ``BasicBlock``s (64, 128, 256, 512 channels; the first block of
stages 2-4 strides 2 and projects its shortcut with a 1x1 convolution), global average pool and
a linear head. The Flax model keeps torch's attribute names, so ``funcmod.convert.torch_to_flax``
moves the weights and running statistics across unrenamed.

One training step is the same on both sides: cross-entropy on integer labels, its gradient and
SGD with momentum 0.9 (``funcmod.optim.from_torch`` of the same torch optimizer), in train mode
(BatchNorm on batch statistics, running statistics updated). The Flax step is the library's own
``funcmod.train.make_train_step``, jitted with the state donated. Before timing, one forward
pass on the same weights and inputs is compared (max relative error of the logits), so the
numbers timed are the same computation. Timing is interleaved in rounds like ``funcmod bench``;
torch runs at each of ``torch_threads`` intra-op threads and the faster is its figure. Where the
Flax step is slower, the row carries the measured reasons: XLA's cost analysis of the
compiled step (its FLOPs and bytes over the median, against torch's rate on the same FLOPs),
then, over more steps, the page faults per step and the largest kinds of XLA operation
(``profile``).

With ``tune_convs`` (``--tune-convs``), the same step traced inside
``funcmod.nn.conv_tune.tuned_plans`` (every convolution's plan measured on this machine instead
of the rule's) is timed beside it, as ``flax_tuned``; its first call includes the measuring.
"""

from __future__ import annotations

import datetime
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from flax import linen

from funcmod import nn as fnn
from funcmod.tools.bench.profile import format_ops, slower_step_measurements
from funcmod.tools.bench.timing import (
    format_seconds,
    steps_per_measurement,
    time_interleaved,
    torch_threads,
)

__all__ = [
    "FlaxResNet18",
    "ResNetBenchConfig",
    "TorchResNet18",
    "render_resnet_markdown",
    "run_resnet_bench",
]

WIDTHS = (64, 128, 256, 512)
CLASSES = 10


@functools.cache
def _torch_classes() -> tuple[type, type]:
    """The torch twin's classes, defined once on first use so that importing this module does
    not import torch."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.relu(out + shortcut)

    class ResNet18(nn.Module):
        def __init__(self, classes: int = CLASSES) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            c_in = 64
            for i, width in enumerate(WIDTHS):
                stride = 1 if i == 0 else 2
                stage = nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1))
                setattr(self, f"layer{i + 1}", stage)
                c_in = width
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return BasicBlock, ResNet18


def TorchResNet18(classes: int = CLASSES) -> Any:
    """The plain-PyTorch ResNet-18 (a fresh ``torch.nn.Module``, torch's default init)."""
    return _torch_classes()[1](classes)


class _Downsample(linen.Module):
    """The shortcut's 1x1 projection and BatchNorm; torch's ``nn.Sequential`` of the two
    (``layers_0``, ``layers_1``: the names ``torch_to_flax`` gives a Sequential's children)."""

    c_in: int
    c_out: int
    stride: int

    def setup(self) -> None:
        self.layers = [
            fnn.Conv2d(self.c_in, self.c_out, 1, stride=self.stride, bias=False),
            fnn.BatchNorm2d(self.c_out),
        ]

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        return self.layers[1](self.layers[0](x), train=train)


class _BasicBlock(linen.Module):
    c_in: int
    c_out: int
    stride: int

    def setup(self) -> None:
        self.conv1 = fnn.Conv2d(self.c_in, self.c_out, 3, stride=self.stride, padding=1, bias=False)
        self.bn1 = fnn.BatchNorm2d(self.c_out)
        self.conv2 = fnn.Conv2d(self.c_out, self.c_out, 3, padding=1, bias=False)
        self.bn2 = fnn.BatchNorm2d(self.c_out)
        if self.stride != 1 or self.c_in != self.c_out:
            self.downsample = _Downsample(self.c_in, self.c_out, self.stride)

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        out = linen.relu(self.bn1(self.conv1(x), train=train))
        out = self.bn2(self.conv2(out), train=train)
        projects = self.stride != 1 or self.c_in != self.c_out
        shortcut = self.downsample(x, train=train) if projects else x
        return linen.relu(out + shortcut)


class _Stage(linen.Module):
    c_in: int
    c_out: int
    stride: int

    def setup(self) -> None:
        self.layers = [
            _BasicBlock(self.c_in, self.c_out, self.stride),
            _BasicBlock(self.c_out, self.c_out, 1),
        ]

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        for block in self.layers:
            x = block(x, train=train)
        return x


class FlaxResNet18(linen.Module):
    """The ResNet-18 with ``funcmod.nn`` layers: NCHW inputs as in torch, torch's names."""

    classes: int = CLASSES

    def setup(self) -> None:
        self.conv1 = fnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = fnn.BatchNorm2d(64)
        self.maxpool = fnn.MaxPool2d(3, stride=2, padding=1)
        ins = (64, *WIDTHS[:-1])
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            _Stage(c_in, c_out, 1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip(ins, WIDTHS, strict=True))
        )
        self.avgpool = fnn.AdaptiveAvgPool2d(1)
        self.fc = fnn.Linear(512, self.classes)

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        x = self.maxpool(linen.relu(self.bn1(self.conv1(x), train=train)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x, train=train)
        x = self.avgpool(x)
        return self.fc(x.reshape(x.shape[0], -1))


@dataclass(frozen=True)
class ResNetBenchConfig:
    """What ``run_resnet_bench`` times: each of ``batches`` at ``size`` x ``size`` inputs,
    ``rounds`` interleaved rounds of about ``min_time`` seconds, torch at each of
    ``torch_threads`` intra-op thread counts (the faster kept), weights and data from ``seed``;
    with ``tune_convs`` also the step with measured convolution plans (``flax_tuned``)."""

    batches: tuple[int, ...] = (2, 32)
    size: int = 64
    rounds: int = 7
    min_time: float = 0.2
    torch_threads: tuple[int, ...] = (1, 2)
    seed: int = 0
    tune_convs: bool = False

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1 or self.size < 32:
            raise ValueError(f"need batches >= 1 and size >= 32, got {self.batches}, {self.size}")
        if self.rounds < 1 or self.min_time <= 0 or min(self.torch_threads, default=0) < 1:
            raise ValueError(
                f"need rounds >= 1, min_time > 0, torch_threads >= 1; got {self.rounds}, "
                f"{self.min_time}, {list(self.torch_threads)}"
            )


def _torch_step(model: Any, x: Any, labels: Any) -> Callable[[int], None]:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()

    return run


def bench_resnet_batch(batch: int, config: ResNetBenchConfig) -> dict[str, Any]:
    """One batch size: the parity check, the first calls and the interleaved medians."""
    import jax
    import jax.numpy as jnp
    import torch

    from funcmod.convert import torch_to_flax
    from funcmod.optim import from_torch

    torch.manual_seed(config.seed)
    twin = TorchResNet18().train()
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal((batch, 3, config.size, config.size)).astype(np.float32)
    labels = rng.integers(0, CLASSES, batch)
    model = FlaxResNet18()
    variables = torch_to_flax(twin)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    got = np.asarray(forward(variables, jnp.asarray(x)))  # jitted: op by op took twice as long
    parity = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))

    tx = from_torch(torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9), twin)
    flax_batch = (jnp.asarray(x), jnp.asarray(labels, jnp.int32))
    # the tuned step's copy is made before any step donates the variables' buffers
    tuned_run = None
    if config.tune_convs:
        tuned_run, _ = _flax_step(model, jax.tree.map(jnp.copy, variables), tx, flax_batch)
    flax_run, lower = _flax_step(model, variables, tx, flax_batch)
    t0 = time.perf_counter()
    flax_run(1)
    first = {"flax_step": time.perf_counter() - t0}
    jax_runs: dict[str, Callable[[int], None]] = {"flax_step": flax_run}
    tuned: dict[str, Any] = {}
    if tuned_run is not None:
        from funcmod.nn.conv_tune import PlanCache, tuned_plans

        cache = PlanCache()
        t0 = time.perf_counter()
        with tuned_plans(cache):
            tuned_run(1)  # the trace measures each distinct convolution
        first["flax_tuned"] = time.perf_counter() - t0
        jax_runs["flax_tuned"] = tuned_run
        tuned = {
            "tuned_convs": cache.measured,
            "tuned_plans": {k: list(v) for k, v in cache.plans.items()},
        }
    compiled = lower().compile()
    cost = compiled.cost_analysis()
    torch_run = _torch_step(twin, torch.from_numpy(x), torch.from_numpy(labels))

    times: dict[str, float] = {}
    flax_steps = 1
    for i, threads in enumerate(config.torch_threads):
        with torch_threads(threads):
            runs = {f"torch_t{threads}": torch_run}
            if i == 0:  # the Flax steps interleaved with torch at its first thread count
                runs = {**jax_runs, **runs}
            t0 = time.perf_counter()
            torch_run(1)
            first.setdefault("torch_eager", time.perf_counter() - t0)
            for run in runs.values():
                run(1)  # warm
            steps = {k: steps_per_measurement(r, min_time=config.min_time) for k, r in runs.items()}
            flax_steps = steps.get("flax_step", flax_steps)
            samples = time_interleaved(runs, steps, config.rounds)
        times.update({k: statistics.median(v) for k, v in samples.items()})
    best = min((k for k in times if k.startswith("torch_t")), key=times.__getitem__)
    times["torch_eager"] = times[best]
    ratio = times["torch_eager"] / times["flax_step"]
    row = {
        "batch": batch,
        "size": config.size,
        "parity_rel": parity,
        "times": times,
        "best_torch": best,
        "first_call_s": first,
        "eager_over_step": ratio,
        "xla_flops": float(cost.get("flops", 0.0)),
        "xla_bytes": float(cost.get("bytes accessed", 0.0)),
        **tuned,
    }
    if "flax_tuned" in times:
        row["eager_over_tuned"] = times["torch_eager"] / times["flax_tuned"]
    row["why_slower"] = None if ratio >= 1.0 else _why_slower(row, flax_run, flax_steps)
    return row


def _flax_step(
    model: Any, variables: Any, tx: Any, batch: Any
) -> tuple[Callable[[int], None], Callable[[], Any]]:
    """A ``make_train_step`` of its own (traced on its first call) on a state from
    ``variables``, whose buffers it donates: ``run(n)`` takes n steps, ``lower()`` lowers the
    step at the current state."""
    import jax

    from funcmod.train import create_train_state, make_train_step, softmax_cross_entropy

    step = make_train_step(softmax_cross_entropy, apply_kwargs={"train": True})
    holder = {"state": create_train_state(model, variables, tx)}

    def run(n: int) -> None:
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"].params, metrics))

    return run, lambda: step.lower(holder["state"], batch)


def _why_slower(row: dict[str, Any], flax_run: Callable[[int], None], steps: int) -> str:
    """The compiled step's own rates (XLA's FLOPs and bytes over the measured median, against
    torch's rate on the same FLOPs), then measured over ``steps`` more Flax steps each: the
    page faults per step and the largest kinds of XLA operation (``profile.op_profile``)."""
    flax_s, torch_s = row["times"]["flax_step"], row["times"]["torch_eager"]
    gflops = row["xla_flops"] / 1e9
    why = slower_step_measurements(flax_run, steps)
    total = why["op_ms_per_step"]
    return (
        f"XLA's step: {gflops:.2f} GFLOP and {row['xla_bytes'] / 2**20:.0f} MiB accessed, "
        f"{gflops / flax_s:.1f} GFLOP/s; torch at the same FLOPs {gflops / torch_s:.1f} "
        f"GFLOP/s; {why['page_faults_per_step']:,.0f} page faults per step; XLA's operations "
        f"{total:.1f} ms a step (summed over threads): {format_ops(why['ops'], total)}"
    )


def run_resnet_bench(
    config: ResNetBenchConfig | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every batch of ``config`` timed; ``{'machine', 'config', 'rows', 'started',
    'load_before', 'load_after', 'wall_s'}``, JSON-able."""
    from funcmod.tools.bench.machine import load_average, machine_info

    config = config or ResNetBenchConfig()
    start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_before = load_average()
    rows = []
    for batch in config.batches:
        rows.append(bench_resnet_batch(batch, config))
        if progress is not None:
            t = rows[-1]["times"]
            progress(
                f"ResNet-18 b{batch} {config.size}x{config.size}: flax step "
                f"{format_seconds(t['flax_step'])}, torch eager {format_seconds(t['torch_eager'])}"
                f" ({rows[-1]['eager_over_step']:.2f}x)"
            )
    return {
        "machine": machine_info(),
        "config": asdict(config),
        "rows": rows,
        "started": started,
        "load_before": load_before,
        "load_after": load_average(),
        "wall_s": time.perf_counter() - start,
    }


def render_resnet_markdown(result: dict[str, Any]) -> str:
    """One row per batch: medians per step, the ratio, first calls, parity, the reason where
    slower."""
    tuned = any("flax_tuned" in row["times"] for row in result["rows"])
    head = ["case", "torch eager", "Flax step", "eager / step"]
    head += ["Flax tuned", "eager / tuned", "tuned first call (convs measured)"] if tuned else []
    head += ["Flax first call", "logits rel. err", "where slower"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        t = row["times"]
        cells = [
            f"ResNet-18 b{row['batch']} {row['size']}x{row['size']}",
            f"{format_seconds(t['torch_eager'])} ({row['best_torch'].removeprefix('torch_')})",
            format_seconds(t["flax_step"]),
            f"{row['eager_over_step']:.2f}x",
        ]
        if tuned:
            cells += (
                [
                    format_seconds(t["flax_tuned"]),
                    f"{row['eager_over_tuned']:.2f}x",
                    f"{row['first_call_s']['flax_tuned']:.1f} s ({row['tuned_convs']})",
                ]
                if "flax_tuned" in t
                else ["-", "-", "-"]
            )
        cells += [
            f"{row['first_call_s']['flax_step']:.1f} s",
            f"{row['parity_rel']:.1e}",
            row["why_slower"] or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
