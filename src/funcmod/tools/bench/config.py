"""What the bench measures: its settings (``BenchConfig``) and its cases (``Case``).

``BenchConfig`` validates and normalises itself on construction, so every function below it
can trust its fields; a bad setting raises ``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from funcmod.articles.catalog import EXAMPLES, Example

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_IMAGE_SIZES",
    "JAX_VARIANTS",
    "TORCH_VARIANTS",
    "BenchConfig",
    "Case",
    "bench_defaults",
    "case_label",
    "default_cases",
    "has_images",
]

DEFAULT_BATCH_SIZES = (32, 256)
# Examples with image inputs also run at these sizes, besides their own (SimpleCNN: 32 and 64).
DEFAULT_IMAGE_SIZES = (64,)

JAX_VARIANTS = ("flax_step", "flax_bound", "flax_scan", "pure_jax")
TORCH_VARIANTS = ("torch_eager", "torch_compile")  # each timed at every torch_threads count


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
      torch_compile: also time ``torch.compile`` (slow: it compiles afresh for every case).
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


def has_images(ex: Example) -> bool:
    """Whether the example takes an image input (and so runs at several image sizes)."""
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
        if has_images(ex):
            sizes = sorted({_own_image_size(ex), *config.image_sizes})
        for batch in config.batch_sizes:
            cases.extend(Case(name, batch, size) for size in sizes)
    return cases


def case_label(row: Mapping[str, Any]) -> str:
    """How the reports name a case: ``MLP b32``, ``SimpleCNN b32 64x64``.

    ``row`` is a result row of ``bench_case`` (or any mapping with its ``example``, ``batch``
    and ``image_size``).
    """
    size = f" {row['image_size']}x{row['image_size']}" if row["image_size"] else ""
    return f"{row['example']} b{row['batch']}{size}"
