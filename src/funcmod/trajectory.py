"""Whole training runs side by side: a PyTorch twin with its ``torch.optim`` optimizer and the
Flax port with ``funcmod.optim.from_torch(optimizer)``, from the same weights, on the same
batches, with the same loss.

``check_trajectory('MLP', optimizer='adam', steps=200)`` trains both, compares every parameter
after every step (``funcmod.tree.compare_trees``: per leaf, ``max|flax - torch| / max|torch|``)
and the two loss curves, and returns a ``TrajectoryReport``.

The loss is the mean squared error against fixed random targets of the output's shape, in
PyTorch's layout (an image output of the port is moved from NHWC to NCHW before the loss). The
Flax side runs one jitted step (``funcmod.train.make_train_step``), compiled once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import torch
from flax import linen as nn

from funcmod.convert import torch_to_flax
from funcmod.layout import to_channels_first, to_channels_last
from funcmod.optim import from_torch
from funcmod.precision import x64_for
from funcmod.train import create_train_state, make_train_step, mse
from funcmod.tree import LeafDiff, compare_trees

__all__ = [
    "DEFAULT_RTOL",
    "OPTIMIZERS",
    "TrajectoryReport",
    "check_trajectory",
    "run_trajectory",
]

# Max relative parameter error allowed at every step of a run.
DEFAULT_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-12}

OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]

# The standard optimizers of a trajectory check, by name.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01),
}


@dataclass(frozen=True)
class TrajectoryReport:
    """How far the Flax run drifted from the torch run.

    Attributes:
      name, optimizer, dtype: what was run.
      steps: number of training steps.
      rtol: the max relative parameter error allowed at every step.
      final: per-leaf errors of the parameters after the last step.
      max_rel_per_step: (steps,) the max relative error over all leaves after each step.
      torch_losses, flax_losses: (steps,) the loss of each step, before its update.
      loss: the loss curves compared as one leaf (max abs error and max rel error).
      moved: how far training moved the torch parameters: the max over leaves of
        ``max|final - initial| / max|initial|``, the scale the errors are to be read against.
    """

    name: str
    optimizer: str
    dtype: str
    steps: int
    rtol: float
    final: list[LeafDiff] = field(default_factory=list)
    max_rel_per_step: list[float] = field(default_factory=list)
    torch_losses: list[float] = field(default_factory=list)
    flax_losses: list[float] = field(default_factory=list)
    loss: LeafDiff | None = None
    moved: float = 0.0

    @property
    def max_rel(self) -> float:
        """The max relative parameter error over all steps and leaves."""
        return max(self.max_rel_per_step, default=0.0)

    @property
    def ok(self) -> bool:
        """Every step's parameters and the loss curve within ``rtol``."""
        return self.max_rel <= self.rtol and (self.loss is None or self.loss.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "steps": self.steps,
            "rtol": self.rtol,
            "ok": self.ok,
            "max_rel": self.max_rel,
            "final": [d.to_dict() for d in self.final],
            "max_rel_per_step": list(self.max_rel_per_step),
            "torch_losses": list(self.torch_losses),
            "flax_losses": list(self.flax_losses),
            "loss": None if self.loss is None else self.loss.to_dict(),
            "moved": self.moved,
        }

    def __str__(self) -> str:
        status = "PASS" if self.ok else "FAIL"
        lines = [
            f"{self.name} {self.optimizer} [{self.dtype}] {status}: {self.steps} steps, max rel "
            f"param error {self.max_rel:.2e} (rtol {self.rtol:g}); parameters moved "
            f"{self.moved:.2e}"
        ]
        for d in self.final:
            lines.append(f"  final {d.path:32} max abs {d.max_abs:.2e}  max rel {d.max_rel:.2e}")
        if self.loss is not None:
            lines.append(f"  loss curve max rel {self.loss.max_rel:.2e}")
        return "\n".join(lines)


def _params(module: torch.nn.Module) -> dict[str, Any]:
    return torch_to_flax(module)["params"]


def run_trajectory(
    torch_module: torch.nn.Module,
    flax_module: nn.Module,
    optimizer: str | OptimizerFactory,
    batches: Sequence[tuple[Sequence[np.ndarray], np.ndarray]],
    *,
    input_layouts: Sequence[str | None] | None = None,
    output_layout: str | None = None,
    max_grad_norm: float | None = None,
    rtol: float | None = None,
    name: str | None = None,
) -> TrajectoryReport:
    """Train ``torch_module`` and ``flax_module`` side by side, one step per batch.

    Args:
      torch_module: the twin, in the batches' dtype; trained in place.
      flax_module: the port; it starts from ``torch_to_flax(torch_module)``.
      optimizer: ``'sgd'``, ``'adam'``, ``'adamw'`` (``OPTIMIZERS``) or a function building a
        torch optimizer from the module (translated with ``from_torch(opt, module)``).
      batches: ``(inputs, targets)`` per step, numpy arrays in PyTorch's layout: ``inputs`` a
        sequence of the forward's arguments, ``targets`` the output's shape. All float32 or all
        float64; float64 needs ``jax_enable_x64`` (``check_trajectory`` enables it).
      input_layouts: per input, ``'NCHW'`` for an image the port takes NHWC, else None.
      output_layout: ``'NCHW'`` when the output is an image.
      max_grad_norm: clip both runs' gradients (``clip_grad_norm_`` / ``clip_grad_norm``).
      rtol: the allowed max relative error; default ``DEFAULT_RTOL`` for the dtype.
      name: the report's title (default: the Flax module's class name).
    """
    if not batches:
        raise ValueError("run_trajectory needs at least one batch")
    dtype = np.dtype(batches[0][1].dtype)
    if dtype not in DEFAULT_RTOL:
        raise ValueError(f"batches must be float32 or float64, got {dtype}")
    layouts = list(input_layouts) if input_layouts is not None else [None] * len(batches[0][0])
    opt_name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")
    factory = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    torch_opt = factory(torch_module)
    tx = from_torch(torch_opt, torch_module, max_grad_norm=max_grad_norm)
    rtol = DEFAULT_RTOL[dtype] if rtol is None else rtol

    def loss_fn(outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return mse(to_channels_first(outputs, output_layout), targets)

    initial = jax.tree.map(np.array, _params(torch_module))
    state = create_train_state(flax_module, torch_to_flax(torch_module), tx)
    train_step = make_train_step(loss_fn)  # jitted once; compiled on the first batch
    per_step: list[float] = []
    torch_losses: list[float] = []
    flax_losses: list[float] = []
    final: list[LeafDiff] = []
    for inputs, targets in batches:
        # torch: one step of the usual loop.
        torch_opt.zero_grad(set_to_none=True)
        out = torch_module(*(torch.from_numpy(np.array(a)) for a in inputs))
        loss = torch.nn.functional.mse_loss(out, torch.from_numpy(np.array(targets)))
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(torch_module.parameters(), max_grad_norm)
        torch_opt.step()
        torch_losses.append(float(loss.detach()))
        # Flax: the same step, jitted.
        flax_inputs = tuple(
            to_channels_last(a, lay) for a, lay in zip(inputs, layouts, strict=True)
        )
        state, metrics = train_step(state, (flax_inputs, targets))
        flax_losses.append(float(metrics["loss"]))
        final = compare_trees(state.params, _params(torch_module), rtol=rtol)
        per_step.append(max(d.max_rel for d in final))
    torch_final = _params(torch_module)
    moved = max(d.max_rel for d in compare_trees(torch_final, initial, rtol=0.0))
    loss_diff = compare_trees(
        {"loss": np.array(flax_losses)}, {"loss": np.array(torch_losses)}, rtol=rtol
    )[0]
    return TrajectoryReport(
        name=name or type(flax_module).__name__,
        optimizer=opt_name,
        dtype=dtype.name,
        steps=len(batches),
        rtol=rtol,
        final=final,
        max_rel_per_step=per_step,
        torch_losses=torch_losses,
        flax_losses=flax_losses,
        loss=loss_diff,
        moved=moved,
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
      example: a ``funcmod.catalog.Example`` or its name (``'MLP'``); it must be trainable.
      optimizer: ``'sgd'`` (lr 0.01, momentum 0.9), ``'adam'`` (lr 1e-3), ``'adamw'`` (lr 1e-3,
        weight decay 0.01) or a function building a torch optimizer from the module.
      steps: number of training steps, each on a fresh random batch.
      dtype: ``np.float32`` or ``np.float64`` (run inside ``jax.enable_x64(True)``).
      seed: seeds the twin's initialisation (the port starts from its converted weights), the
        inputs and the targets.
      batch: the batch size.
      image_size: height and width of image inputs (default: the example's own).
      max_grad_norm: clip the gradients of both runs to this norm.
      rtol: the allowed max relative parameter error (default ``DEFAULT_RTOL``).
    """
    from funcmod.catalog import EXAMPLES

    ex = EXAMPLES[example] if isinstance(example, str) else example
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m funcmod.trajectory``: the table of every trainable example x optimizer x
    dtype, max relative parameter error over the run; exits 1 if any run misses its target."""
    import argparse
    import time

    from funcmod.catalog import EXAMPLES

    parser = argparse.ArgumentParser(prog="python -m funcmod.trajectory")
    trainable = [n for n, e in EXAMPLES.items() if e.trainable]
    parser.add_argument("--examples", nargs="+", default=trainable, choices=trainable)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=None, help="default: the example's")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"{'example':16} {'optimizer':9} {'float32':>9} {'float64':>9}  (max rel param error)")
    all_ok = True
    for name in args.examples:
        for opt in args.optimizers:
            cells = []
            for dtype in (np.float32, np.float64):
                r = check_trajectory(
                    name, optimizer=opt, steps=args.steps, dtype=dtype, image_size=args.image_size
                )
                all_ok &= r.ok
                cells.append(f"{r.max_rel:9.2e}{' ' if r.ok else '!'}")
            print(f"{name:16} {opt:9} {' '.join(cells)}", flush=True)
    print(f"{args.steps} steps each, {time.perf_counter() - start:.0f} s; '!' misses its target")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
