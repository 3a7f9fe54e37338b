"""The parity and trajectory checks bound to the seed examples: a seeded twin, its weights
converted to the port, random inputs of the example's shapes.

``check_example('MLP')`` is ``funcmod.parity.check_parity`` on one example;
``check_trajectory('MLP', optimizer='adam')`` is ``funcmod.trajectory.run_trajectory`` on it.
Both need torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from funcmod.articles.catalog import get_example
from funcmod.convert import torch_to_flax
from funcmod.parity import ParityReport, check_parity
from funcmod.precision import x64_for
from funcmod.trajectory import OptimizerFactory, TrajectoryReport, run_trajectory

__all__ = ["check_example", "check_trajectory"]


def check_example(
    example: Any,
    *,
    dtype: Any = np.float32,
    batch: int = 4,
    seed: int = 0,
    image_size: int | None = None,
) -> ParityReport:
    """Parity of one seed example: a seeded twin, its weights converted, random inputs.

    Args:
      example: a ``funcmod.articles.catalog.Example`` or its name (``'MLP'``).
      dtype: ``np.float32`` or ``np.float64`` (float64 runs inside ``jax.enable_x64(True)``).
      batch: the batch size of the random inputs.
      seed: seeds the twin's initialisation, the inputs and the cotangent.
      image_size: height and width of image inputs (default: the example's own).
    """
    ex = get_example(example)
    dtype = np.dtype(dtype)
    torch.manual_seed(seed)
    twin = ex.torch_module(dtype)
    with x64_for(dtype):
        inputs = ex.make_inputs(np.random.default_rng(seed), batch, dtype, image_size)
        return check_parity(
            twin,
            ex.flax_module(param_dtype=dtype),
            torch_to_flax(twin),
            inputs,
            input_layouts=ex.input_layouts,
            output_layout=ex.output_layout,
            input_names=ex.input_names,
            seed=seed,
            name=ex.name,
        )


def check_trajectory(
    example: Any,
    *,
    optimizer: str | OptimizerFactory = "sgd",
    steps: int = 200,
    dtype: Any = np.float32,
    seed: int = 0,
    batch: int = 4,
    image_size: int | None = None,
    max_grad_norm: float | None = None,
    rtol: float | None = None,
) -> TrajectoryReport:
    """Train a seed example's twin and port side by side for ``steps`` steps.

    Args:
      example: a ``funcmod.articles.catalog.Example`` or its name (``'MLP'``); it must be trainable.
      optimizer: ``'sgd'`` (lr 0.01, momentum 0.9), ``'adam'`` (lr 1e-3), ``'adamw'`` (lr 1e-3,
        weight decay 0.01) or a function building a torch optimizer from the module.
      steps: number of training steps, each on a fresh random batch.
      dtype: ``np.float32`` or ``np.float64`` (run inside ``jax.enable_x64(True)``).
      seed: seeds the twin's initialisation (the port starts from its converted weights), the
        inputs and the targets.
      batch: the batch size.
      image_size: height and width of image inputs (default: the example's own).
      max_grad_norm: clip the gradients of both runs to this norm.
      rtol: the allowed max relative parameter error (default:
        ``funcmod.precision.RTOL["trajectory"]``).
    """
    ex = get_example(example)
    if not ex.trainable:
        raise ValueError(f"{ex.name} has no parameters to train")
    dtype = np.dtype(dtype)
    torch.manual_seed(seed)
    twin = ex.torch_module(dtype)  # raises unless float32 or float64
    rng = np.random.default_rng(seed)
    inputs = [ex.make_inputs(rng, batch, dtype, image_size) for _ in range(steps)]
    with torch.no_grad():
        out_shape = tuple(twin(*(torch.from_numpy(a) for a in inputs[0])).shape)
    batches = [(xs, rng.standard_normal(out_shape).astype(dtype)) for xs in inputs]
    with x64_for(dtype):
        return run_trajectory(
            twin,
            ex.flax_module(param_dtype=dtype),
            optimizer,
            batches,
            input_layouts=ex.input_layouts,
            output_layout=ex.output_layout,
            max_grad_norm=max_grad_norm,
            rtol=rtol,
            name=ex.name,
        )
