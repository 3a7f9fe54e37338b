"""torch lr schedulers as tables of the values torch uses, step by step.

``schedule_from_torch(scheduler, scheduler_every, steps)`` runs a copy of the scheduler (its
optimizer's parameters replaced by one-element stand-ins, so nothing of the model is copied)
for the run's length and records, per param group, ``get_last_lr()`` and, for a scheduler that
cycles momentum, the ``momentum`` / ``betas[0]`` it sets. Recording torch's own values makes the
schedule exact (bitwise the floats torch uses) for every scheduler whose lr depends only on the
step count, including torch's recursive (chainable) forms, which round differently from the
closed forms in torch's documentation and in optax. The tables are ``StepTable``s: optax
schedules, NaN past the tabulated run.

``ReduceLROnPlateau`` depends on the losses, not the step count: it is refused. So is a
scheduler attached to the optimizer but not passed (``attached_schedulers`` finds them).
"""

from __future__ import annotations

import copy
import gc
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from funcmod.optim.transforms import StepTable

if TYPE_CHECKING:
    import torch

__all__ = ["attached_schedulers", "schedule_from_torch", "tabulate"]

# Schedulers whose values are a function of the step count alone.
_SUPPORTED = {
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "LinearLR",
    "ConstantLR",
    "PolynomialLR",
    "OneCycleLR",
    "CyclicLR",
    "SequentialLR",
    "ChainedScheduler",
    "LambdaLR",
    "MultiplicativeLR",
}


def _children(scheduler: Any) -> list[Any]:
    return list(getattr(scheduler, "_schedulers", []))


def _check_supported(scheduler: Any) -> None:
    name = type(scheduler).__name__
    if name == "ReduceLROnPlateau":
        raise NotImplementedError(
            "ReduceLROnPlateau changes the lr from the metric passed to scheduler.step(metric) "
            "(often a validation loss, once per epoch), which the optax transformation never "
            "sees; it is not translated. Drive the lr yourself (optax.inject_hyperparameters) "
            "or use a step-count scheduler"
        )
    if name not in _SUPPORTED:
        raise NotImplementedError(
            f"lr scheduler {type(scheduler).__module__}.{type(scheduler).__qualname__} is not "
            f"translated; supported: {sorted(_SUPPORTED)}"
        )
    for child in _children(scheduler):
        _check_supported(child)


def attached_schedulers(
    optimizer: torch.optim.Optimizer, *, besides: Sequence[Any] = ()
) -> list[Any]:
    """The lr schedulers (``ReduceLROnPlateau`` included) whose ``optimizer`` is ``optimizer``,
    other than those in ``besides`` (compared by identity).

    torch schedulers register nothing in the optimizer that names them: found through the
    garbage collector's referrers (instances that hold the optimizer). The step-count
    schedulers also leave ``initial_lr`` in the param groups and wrap ``optimizer.step``;
    ``from_torch`` checks those signs too, for a scheduler already gone.

    A scheduler no longer referenced may still wait in a reference cycle for the collector, so
    where the scan finds one outside ``besides``, it runs ``gc.collect()`` and scans again; only
    then, because a full collection in a process holding JAX and torch takes a large fraction
    of a second, and ``from_torch(opt, scheduler=s)`` passes ``s`` here as ``besides``.
    """
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    def scan() -> list[Any]:
        found: list[Any] = []
        for ref in gc.get_referrers(optimizer):
            owners = gc.get_referrers(ref) if isinstance(ref, dict) else [ref]
            for obj in owners:
                is_scheduler = isinstance(obj, LRScheduler | ReduceLROnPlateau)
                ours = is_scheduler and getattr(obj, "optimizer", None) is optimizer
                known = any(obj is f for f in found) or any(obj is b for b in besides)
                if ours and not known:
                    found.append(obj)
        return found

    if not scan():
        return []
    gc.collect()  # after the first scan's list is gone: it would keep a dead scheduler alive
    return scan()


def _stand_in_copy(scheduler: Any) -> Any:
    """A deep copy of ``scheduler`` whose optimizer holds one-element tensors for parameters
    and no state (the lr schedule never reads either)."""
    import torch

    opt = scheduler.optimizer
    memo: dict[int, Any] = {id(opt.state): type(opt.state)()}
    for group in opt.param_groups:
        for p in group["params"]:
            memo[id(p)] = torch.zeros(1)
    return copy.deepcopy(scheduler, memo)


def tabulate(scheduler: Any, n_scheduler_steps: int) -> list[dict[str, np.ndarray]]:
    """Per param group, ``{'lr': (n + 1,), 'momentum'|'beta1': (n + 1,)}``: the values after
    0..n further ``scheduler.step()`` calls (momentum only where the scheduler changes it)."""
    _check_supported(scheduler)
    sched = _stand_in_copy(scheduler)
    groups = sched.optimizer.param_groups
    rows: list[list[tuple[float, float | None, float | None]]] = []

    def record() -> None:
        lrs = sched.get_last_lr()
        rows.append(
            [
                (
                    float(lr),
                    float(g["momentum"]) if "momentum" in g else None,
                    float(g["betas"][0]) if "betas" in g else None,
                )
                for lr, g in zip(lrs, groups, strict=True)
            ]
        )

    record()
    sched.optimizer._opt_called = True  # torch warns when the optimizer never stepped
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lr_scheduler.*")
        for _ in range(n_scheduler_steps):
            sched.step()
            record()
    out = []
    for i in range(len(groups)):
        col = {"lr": np.array([r[i][0] for r in rows], np.float64)}
        for j, key in ((1, "momentum"), (2, "beta1")):
            vals = [r[i][j] for r in rows]
            if vals[0] is not None and len(set(vals)) > 1:
                col[key] = np.array(vals, np.float64)
        out.append(col)
    return out


def _length(scheduler: Any, steps: int | None, every: int) -> int:
    """How many optimizer steps to tabulate."""
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return int(steps)
    total = getattr(scheduler, "total_steps", None)  # OneCycleLR's own length
    if total is not None:
        return (int(total) - scheduler.last_epoch) * every
    raise ValueError(
        f"{type(scheduler).__name__} has no end of its own: pass steps= (the number of "
        f"optimizer steps the run makes) so that its lr can be tabulated for that run"
    )


def schedule_tables(
    scheduler: Any, every: int = 1, steps: int | None = None, phase: int = 0
) -> list[dict[str, StepTable]]:
    """Per param group ``{'lr': StepTable, ...}`` for ``steps`` optimizer steps."""
    every = int(every)
    if every < 1:
        raise ValueError(f"scheduler_every must be >= 1, got {every}")
    _check_supported(scheduler)
    n = _length(scheduler, steps, every)
    columns = tabulate(scheduler, (n + phase - 1) // every)
    return [{k: StepTable(v, every, phase) for k, v in col.items()} for col in columns]


def schedule_from_torch(
    scheduler: Any, scheduler_every: int = 1, *, steps: int | None = None
) -> StepTable | list[StepTable]:
    """The optax schedule (``count -> lr``, ``count`` the optimizer steps from now) that gives
    the lr torch uses at each step, when the loop calls ``scheduler.step()`` after every
    ``scheduler_every`` optimizer steps.

    Args:
      scheduler: a step-count torch lr scheduler (see the module docstring); not changed.
      scheduler_every: optimizer steps per ``scheduler.step()`` (1: per step; batches per
        epoch: per epoch).
      steps: the run's length in optimizer steps; optional for ``OneCycleLR``. Past it the
        schedule is NaN.

    Returns:
      one schedule, or a list with one per param group when there are several. Each is
      float64-exact (the floats torch computes) with x64 on, torch's value rounded to float32
      otherwise.
    """
    tables = [t["lr"] for t in schedule_tables(scheduler, scheduler_every, steps)]
    return tables[0] if len(tables) == 1 else tables
