"""What the JAX and torch variants share: the ``Variant`` the timer runs, and what every
variant of a case starts from (the same inputs and targets, the same torch twin and optimizer,
from the same seed), so that the variants differ in how they take a step and in nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcmod.articles.catalog import Example
from funcmod.layout import to_channels_last
from funcmod.tools.bench.config import Case

__all__ = ["CaseData", "Variant", "make_data", "twin_and_optimizer"]


@dataclass
class Variant:
    """A way of taking training steps: ``run(n)`` takes n steps (``per_call`` per dispatch)
    and returns when they are done.

    ``first_call_s`` is the time of its first call (compiles included), ``compile_detail`` that
    time's JAX breakdown (``CompileCounter.seconds``; empty for torch). ``around()`` is the
    context every ``run`` is called in, entered outside the timer (torch's thread count:
    setting it rebuilds torch's thread pool).
    """

    run: Callable[[int], None]
    per_call: int = 1
    first_call_s: float = 0.0
    compile_detail: dict[str, float] = field(default_factory=dict)
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


@dataclass
class CaseData:
    """One case's random inputs and targets, in each library's layout (NCHW for torch, NHWC
    for Flax)."""

    torch_inputs: list[Any]
    torch_targets: Any
    flax_inputs: tuple[jax.Array, ...]
    flax_targets: jax.Array


def make_data(ex: Example, case: Case, seed: int) -> CaseData:
    """Inputs at the case's batch and image size, and standard normal targets shaped like the
    twin's output."""
    import torch

    rng = np.random.default_rng(seed)
    inputs = ex.make_inputs(rng, case.batch, np.float32, case.image_size)
    torch.manual_seed(seed)
    with torch.no_grad():
        out_shape = tuple(ex.torch_module()(*(torch.from_numpy(a) for a in inputs)).shape)
    targets = rng.standard_normal(out_shape).astype(np.float32)  # PyTorch's layout
    return CaseData(
        torch_inputs=[torch.from_numpy(a.copy()) for a in inputs],
        torch_targets=torch.from_numpy(targets.copy()),
        flax_inputs=tuple(
            jnp.asarray(to_channels_last(a, lay))  # NCHW -> NHWC for images
            for a, lay in zip(inputs, ex.input_layouts, strict=True)
        ),
        flax_targets=jnp.asarray(to_channels_last(targets, ex.output_layout)),
    )


def twin_and_optimizer(ex: Example, optimizer: str, seed: int) -> tuple[Any, Any]:
    """A fresh torch twin (weights from ``seed``) and its ``torch.optim`` optimizer; the JAX
    variants translate both (``torch_to_flax``, ``from_torch``), so all start alike."""
    import torch

    from funcmod.trajectory import OPTIMIZERS

    torch.manual_seed(seed)
    twin = ex.torch_module()
    return twin, OPTIMIZERS[optimizer](twin)
