"""Whole training runs side by side: a PyTorch twin with its ``torch.optim`` optimizer and the
Flax port with ``funcmod.optim.from_torch(optimizer)``, from the same weights, on the same
batches, with the same loss.

``run_trajectory`` trains both, compares every parameter after every step
(``funcmod.tree.compare_trees``: per leaf, ``max|flax - torch| / max|torch|``) and the two loss
curves, and returns a ``TrajectoryReport``. ``funcmod.articles.checks.check_trajectory`` runs it
on a seed example.

The loss is by default the mean squared error against targets of the output's shape, in
PyTorch's layout (an image output of the port is moved from NHWC to NCHW before the loss);
``loss='cross_entropy'`` (or ``cross_entropy(ignore_index=..., label_smoothing=...)``) takes
integer class labels, and any ``(torch loss, JAX loss)`` pair works. The Flax side runs one
jitted step (``funcmod.train.make_train_step``), compiled once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn

from funcmod.convert import torch_to_flax
from funcmod.layout import inputs_to_channels_last
from funcmod.optim import from_torch
from funcmod.precision import DTYPES, RTOL
from funcmod.train import create_train_state, make_train_step, mse_in_torch_layout
from funcmod.tree import LeafDiff, compare_trees

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "TrajectoryReport",
    "cross_entropy",
    "run_trajectory",
]

OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]

# The standard optimizers of a trajectory check, by name.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01),
}


# (torch loss(output, targets), JAX loss(port output, targets)) -> () scalar each. The JAX loss
# gets the port's output in the port's layout (NHWC for an image).
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
LossPair = tuple[Callable[[Any, Any], Any], Callable[[jax.Array, jax.Array], jax.Array]]


def cross_entropy(ignore_index: int = -100, label_smoothing: float = 0.0) -> LossPair:
    """``torch.nn.functional.cross_entropy`` (mean) and its JAX twin, for integer labels.

    Classes are dim 1 in torch (``(N, C)`` or ``(N, C, H, W)`` against ``(N,)`` or
    ``(N, H, W)`` labels) and the last axis of the port's output (NHWC). A label equal to
    ``ignore_index`` counts neither in the loss nor in the mean's count. With label smoothing
    ``e`` the target is ``(1 - e) onehot + e / C``: torch's mean is
    ``(1 - e) * mean(-log p_y) + (e / C) * mean(-sum_c log p_c)`` over the kept labels.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")

    def torch_loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            out, labels.long(), ignore_index=ignore_index, label_smoothing=label_smoothing
        )

    def jax_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"cross_entropy needs integer labels, got {labels.dtype}")
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"labels {labels.shape} must be the output {logits.shape} without its classes"
            )
        classes = logits.shape[-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        kept = labels != ignore_index
        safe = jnp.where(kept, labels, 0)
        nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
        count = jnp.sum(kept).astype(logits.dtype)
        loss = jnp.sum(jnp.where(kept, nll, 0.0)) / count
        if label_smoothing == 0.0:
            return loss
        smooth = jnp.sum(jnp.where(kept, -jnp.sum(logp, axis=-1), 0.0)) / count
        return (1 - label_smoothing) * loss + (label_smoothing / classes) * smooth

    return torch_loss, jax_loss


LOSSES: dict[str, Callable[[], LossPair]] = {"cross_entropy": cross_entropy}


def _loss_pair(loss: str | LossPair, output_layout: str | None) -> tuple[str, LossPair]:
    if isinstance(loss, str):
        if loss == "mse":
            return loss, (torch.nn.functional.mse_loss, mse_in_torch_layout(output_layout))
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected 'mse', {sorted(LOSSES)} or a pair")
        return loss, LOSSES[loss]()
    if not (isinstance(loss, tuple) and len(loss) == 2 and all(map(callable, loss))):
        raise ValueError(
            f"loss must be a name or a (torch loss, JAX loss) pair of callables, got {loss!r}"
        )
    return getattr(loss[1], "__name__", "custom"), loss


def _float_dtype(batch: tuple[Sequence[np.ndarray], np.ndarray]) -> np.dtype:
    """The run's dtype: the first float array among the inputs, then the targets."""
    for a in [*batch[0], batch[1]]:
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            return np.dtype(np.asarray(a).dtype)
    raise ValueError("the batches hold no float array (inputs or targets) to take the dtype from")


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
    loss: str | LossPair = "mse",
    scheduler: SchedulerFactory | None = None,
    scheduler_every: int = 1,
) -> TrajectoryReport:
    """Train ``torch_module`` and ``flax_module`` side by side, one step per batch.

    Args:
      torch_module: the twin, in the batches' dtype; trained in place.
      flax_module: the port; it starts from ``torch_to_flax(torch_module)``.
      optimizer: ``'sgd'``, ``'adam'``, ``'adamw'`` (``OPTIMIZERS``) or a function building a
        torch optimizer from the module (translated with ``from_torch(opt, module)``).
      batches: ``(inputs, targets)`` per step, numpy arrays in PyTorch's layout: ``inputs`` a
        sequence of the forward's arguments, ``targets`` what the loss takes (the output's shape
        for MSE, integer labels for cross-entropy). Floats all float32 or all float64; float64
        needs ``jax_enable_x64`` (``funcmod.precision.x64_for``).
      input_layouts: per input, ``'NCHW'`` for an image the port takes NHWC, else None.
      output_layout: ``'NCHW'`` when the output is an image.
      max_grad_norm: clip both runs' gradients (``clip_grad_norm_`` / ``clip_grad_norm``).
      rtol: the allowed max relative error; default ``funcmod.precision.RTOL["trajectory"]``.
      name: the report's title (default: the Flax module's class name).
      loss: ``'mse'`` (default), ``'cross_entropy'`` (``cross_entropy()``: torch's defaults),
        or a ``(torch loss, JAX loss)`` pair, e.g. ``cross_entropy(label_smoothing=0.1)``.
      scheduler: a function building the torch lr scheduler from the torch optimizer
        (``lambda opt: StepLR(opt, 30)``); torch's loop calls ``scheduler.step()`` after every
        ``scheduler_every`` optimizer steps, and the port trains with
        ``from_torch(optimizer, module, scheduler=..., scheduler_every=..., steps=len(batches))``.
      scheduler_every: optimizer steps between two ``scheduler.step()`` calls (1 for per-step
        schedules, the batches per epoch for per-epoch ones).
    """
    if not batches:
        raise ValueError("run_trajectory needs at least one batch")
    _, (torch_loss, jax_loss) = _loss_pair(loss, output_layout)
    dtype = _float_dtype(batches[0])
    if dtype not in DTYPES.values():
        raise ValueError(f"batches must be float32 or float64, got {dtype}")
    layouts = list(input_layouts) if input_layouts is not None else [None] * len(batches[0][0])
    opt_name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")
    factory = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    torch_opt = factory(torch_module)
    torch_sched = scheduler(torch_opt) if scheduler is not None else None
    tx = from_torch(
        torch_opt,
        torch_module,
        max_grad_norm=max_grad_norm,
        scheduler=torch_sched,
        scheduler_every=scheduler_every,
        steps=len(batches) if torch_sched is not None else None,
    )
    rtol = RTOL["trajectory"][dtype] if rtol is None else rtol

    initial = jax.tree.map(np.array, _params(torch_module))
    state = create_train_state(flax_module, torch_to_flax(torch_module), tx)
    # Jitted once; compiled on the first batch.
    train_step = make_train_step(jax_loss)
    per_step: list[float] = []
    torch_losses: list[float] = []
    flax_losses: list[float] = []
    final: list[LeafDiff] = []
    for i, (inputs, targets) in enumerate(batches):
        # torch: one step of the usual loop.
        torch_opt.zero_grad(set_to_none=True)
        out = torch_module(*(torch.from_numpy(np.array(a)) for a in inputs))
        value = torch_loss(out, torch.from_numpy(np.array(targets)))
        value.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(torch_module.parameters(), max_grad_norm)
        torch_opt.step()
        if torch_sched is not None and (i + 1) % scheduler_every == 0:
            torch_sched.step()
        torch_losses.append(float(value.detach()))
        # Flax: the same step, jitted.
        flax_inputs = inputs_to_channels_last(inputs, layouts)
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
