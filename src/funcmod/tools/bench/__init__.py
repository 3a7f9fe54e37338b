"""``funcmod bench``: the time of one training step of every trainable seed example, in Flax and
in PyTorch, measured side by side in one process.

For each case (example x batch size x image size) it times one training step (MSE loss against
fixed random targets, the same optimizer on both sides: a ``torch.optim`` optimizer and its
``funcmod.optim.from_torch`` translation, Adam with lr 1e-3 by default) in five variants:

* ``flax_step``: ``funcmod.train.make_train_step(mse)``, jitted, state donated;
* ``flax_scan``: ``funcmod.train.make_train_epoch(mse)``, K steps in one ``lax.scan`` dispatch,
  the time per call divided by K;
* ``pure_jax``: a hand-written ``jax.jit(value_and_grad + optax)`` step on a raw params dict,
  what funcmod's own step is measured against;
* ``torch_eager`` and ``torch_compile``: the same step in torch, eager and ``torch.compile``d,
  each at several intra-op thread counts, the fastest used.

It reports each variant's median step time, its first-call (compile) time, its GFLOP/s against
the machine's matmul peak, the speed-ups of Flax over torch, and whether the speed targets
funcmod holds itself to are met (reported, never enforced).

Run it as ``funcmod bench [EXAMPLE ...] [--out DIR]`` (``funcmod bench --help`` for the
options), or ``make bench``, which writes ``results/bench.{json,md,png}``; a full run takes
minutes. From Python: ``write_results(run_bench(BenchConfig(...)), outdir)``.

The modules, each depending only on those above it in this list:

* ``config``: ``BenchConfig``, ``Case``, ``default_cases``;
* ``timing``: the timer and its statistics, ``CompileCounter``;
* ``machine``: the machine's description, load and matmul peak;
* ``variants``, ``jax_variants``, ``torch_variants``: the timed steps of one case;
* ``targets``: the speed targets and ``evaluate_targets``;
* ``profile``: what a slower step spends its time on (XLA's operations from a profiler
  trace, page faults per step);
* ``run``: ``bench_case`` and ``run_bench``;
* ``report``: markdown, the chart, ``write_results``;
* ``convs``: the conv micro-benchmark (``funcmod bench --convs``), each lowering of
  ``funcmod.nn.conv`` against torch eager on ResNet-18 and MobileNetV3 shapes;
* ``convs_report``: the conv micro-benchmark's markdown table and its verdicts;
* ``corpus``: the ported corpus (``funcmod bench --corpus``), each ``funcmod.corpus`` model's
  jitted train step against torch eager and ``torch.compile``, compile times apart;
* ``resnet``: a hand-written ResNet-18 (``funcmod bench --resnet``), ``funcmod.nn`` layers and
  its torch twin, the library's jitted train step against torch eager;
* ``command``: the ``funcmod bench`` subcommand (``add_parser``, ``run``), the only argparse.
"""

from funcmod.tools.bench.config import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_IMAGE_SIZES,
    JAX_VARIANTS,
    TORCH_VARIANTS,
    BenchConfig,
    Case,
    bench_defaults,
    default_cases,
)
from funcmod.tools.bench.jax_variants import JittedSteps, jitted_steps
from funcmod.tools.bench.machine import machine_info, measure_matmul_peak
from funcmod.tools.bench.report import plot_ratios, render_markdown, write_results
from funcmod.tools.bench.run import bench_case, run_bench
from funcmod.tools.bench.targets import TARGETS, evaluate_targets
from funcmod.tools.bench.timing import (
    CompileCounter,
    format_seconds,
    steps_per_measurement,
    time_interleaved,
)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_IMAGE_SIZES",
    "JAX_VARIANTS",
    "TARGETS",
    "TORCH_VARIANTS",
    "BenchConfig",
    "Case",
    "CompileCounter",
    "JittedSteps",
    "bench_case",
    "bench_defaults",
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
