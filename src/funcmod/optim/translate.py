"""``from_torch``: a torch optimizer (with its lr scheduler and its state) as an optax
transformation for the Flax port's ``variables['params']``.

Each param group becomes one of ``funcmod.optim.transforms`` / ``adaptive``'s torch-exact
transformations with the group's settings; several groups become ``optax.multi_transform``
labelled by which torch parameters are in which group (mapped to Flax paths by
``funcmod.optim.state.param_paths``, through ``funcmod.convert``'s public functions);
parameters in no group or with ``requires_grad=False`` get ``optax.set_to_zero`` (torch skips
them). A parameter the loss does not reach is the one case this cannot see: torch leaves its
``.grad`` None and skips it, while ``jax.grad`` gives zeros, which the
transformation still decays and feeds to the moments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import optax
from flax import traverse_util

import funcmod.optim.adaptive as ad
from funcmod.optim.schedules import attached_schedulers, schedule_tables
from funcmod.optim.state import carried_init, group_counts, param_paths
from funcmod.optim.transforms import StepTable, clip_grad_norm, torch_adam, torch_sgd

if TYPE_CHECKING:
    import torch

__all__ = ["from_torch"]

_BETAS = {"lr", "betas", "eps", "weight_decay"}
_KEYS: dict[str, set[str]] = {
    "SGD": {"lr", "momentum", "dampening", "weight_decay", "nesterov"},
    "Adam": _BETAS | {"amsgrad", "decoupled_weight_decay"},
    "AdamW": _BETAS | {"amsgrad", "decoupled_weight_decay"},
    "RMSprop": {"lr", "alpha", "eps", "weight_decay", "momentum", "centered"},
    "Adagrad": {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"},
    "Adamax": _BETAS,
    "NAdam": _BETAS | {"momentum_decay", "decoupled_weight_decay"},
    "RAdam": _BETAS | {"decoupled_weight_decay"},
    "Adadelta": {"lr", "rho", "eps", "weight_decay"},
}
# Implementation choices that leave the arithmetic alone (differentiable is checked apart).
_COMMON = {"params", "maximize", "foreach", "fused", "capturable", "differentiable"}
# What step-count schedulers write into the groups.
_SCHEDULER_KEYS = {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}
_FROZEN = "frozen"


def _f(value: Any) -> float:
    return float(value)  # a Python float, or a one-element tensor (torch allows tensor lr)


def _check_group(name: str, i: int, group: dict[str, Any], scheduled: bool) -> None:
    where = f"{name} param group {i}"
    allowed = _KEYS[name] | _COMMON | (_SCHEDULER_KEYS if scheduled else set())
    if not scheduled and "initial_lr" in group:
        raise NotImplementedError(
            f"{where} has 'initial_lr': an lr scheduler is attached to the optimizer but was not "
            f"passed; pass it (from_torch(optimizer, module, scheduler=...)), or the learning "
            f"rate would silently stay constant"
        )
    unknown = sorted(set(group) - allowed)
    if unknown:
        raise NotImplementedError(
            f"{where} has settings from_torch does not know: {unknown}; expected only "
            f"{sorted(allowed)}"
        )
    if group.get("maximize", False):
        raise NotImplementedError(f"{where}: maximize=True is not supported (negate the loss)")
    if group.get("differentiable", False):
        raise NotImplementedError(
            f"{where}: differentiable=True makes the torch step part of the autograd graph; "
            f"an optax transformation cannot reproduce that"
        )


def _group_transform(
    name: str, i: int, group: dict[str, Any], tables: dict[str, StepTable] | None, opt: Any
) -> optax.GradientTransformation:
    _check_group(name, i, group, tables is not None)
    tables = tables or {}
    lr = tables.get("lr", _f(group["lr"]))
    wd = _f(group.get("weight_decay", 0.0))
    if "betas" in group:
        b1, b2 = (_f(b) for b in group["betas"])
        b1 = tables.get("beta1", b1)
    if name == "SGD":
        momentum = tables.get("momentum", _f(group["momentum"]))
        return torch_sgd(lr, momentum, _f(group["dampening"]), wd, nesterov=bool(group["nesterov"]))
    if name in ("Adam", "AdamW"):
        decoupled = name == "AdamW" or bool(group.get("decoupled_weight_decay", False))
        return torch_adam(
            lr, b1, b2, _f(group["eps"]), wd, decoupled=decoupled, amsgrad=bool(group["amsgrad"])
        )
    if name == "RMSprop":
        momentum = tables.get("momentum", _f(group["momentum"]))
        return ad.torch_rmsprop(
            lr, _f(group["alpha"]), _f(group["eps"]), wd, momentum, centered=bool(group["centered"])
        )
    if name == "Adagrad":
        return ad.torch_adagrad(
            lr, _f(group["lr_decay"]), wd, _f(group["initial_accumulator_value"]), _f(group["eps"])
        )
    if name == "Adamax":
        return ad.torch_adamax(lr, b1, b2, _f(group["eps"]), wd)
    if name == "NAdam":
        import torch

        return ad.torch_nadam(
            lr,
            b1,
            b2,
            _f(group["eps"]),
            wd,
            _f(group["momentum_decay"]),
            decoupled=bool(group["decoupled_weight_decay"]),
            mu_product_dtype=_mu_product_dtype(opt, torch.get_default_dtype()),
        )
    if name == "RAdam":
        return ad.torch_radam(
            lr, b1, b2, _f(group["eps"]), wd, decoupled=bool(group["decoupled_weight_decay"])
        )
    return ad.torch_adadelta(lr, _f(group["rho"]), _f(group["eps"]), wd)


def _mu_product_dtype(opt: Any, default: Any) -> Any:
    """NAdam's ``mu_product`` dtype: the carried tensor's, else torch's default scalar dtype."""
    import torch

    for s in opt.state.values():
        if "mu_product" in s:
            default = s["mu_product"].dtype
            break
    return np.float64 if default == torch.float64 else np.float32


def _optimizer_name(optimizer: Any) -> str:
    import torch

    kind = type(optimizer)
    for name in _KEYS:
        if kind is getattr(torch.optim, name):
            return name
    raise NotImplementedError(
        f"from_torch supports torch.optim.{', '.join(_KEYS)}, not "
        f"{kind.__module__}.{kind.__qualname__}"
    )


def _check_schedulers(optimizer: Any, scheduler: Any) -> None:
    family = []
    if scheduler is not None:
        if getattr(scheduler, "optimizer", None) is not optimizer:
            raise ValueError(
                f"the scheduler {type(scheduler).__name__} is attached to another optimizer"
            )
        family = [scheduler, *getattr(scheduler, "_schedulers", [])]
    attached = attached_schedulers(optimizer, besides=family)
    if attached:
        names = sorted({type(s).__name__ for s in attached})
        raise NotImplementedError(
            f"lr scheduler(s) {names} attached to the optimizer but not passed: pass the one "
            f"your loop steps as from_torch(..., scheduler=...), or the lr would silently stay "
            f"constant"
        )
    if scheduler is None and hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        raise NotImplementedError(
            "optimizer.step is wrapped by an lr scheduler (torch's _wrapped_by_lr_sched): "
            "a scheduler was attached; pass it as from_torch(..., scheduler=...)"
        )


def from_torch(
    optimizer: torch.optim.Optimizer,
    module: torch.nn.Module | None = None,
    *,
    scheduler: Any = None,
    scheduler_every: int = 1,
    steps: int | None = None,
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """The optax transformation that updates like ``optimizer`` (stepped by ``scheduler``).

    Args:
      optimizer: ``torch.optim.SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Adagrad``,
        ``Adamax``, ``NAdam``, ``RAdam`` or ``Adadelta``, fresh or stepped: a stepped one's
        state (buffers, moments, step counts) is what the returned ``init`` gives.
      module: the torch module whose parameters the optimizer holds. Needed with several
        param groups, frozen parameters or a stepped optimizer (to map torch parameters to Flax
        paths); optional with one fresh group.
      scheduler: the torch lr scheduler attached to ``optimizer`` that the loop steps
        (``funcmod.optim.schedules``); each step then uses the lr (and cycled momentum) torch
        would. One attached but not passed is an error.
      scheduler_every: optimizer steps between two ``scheduler.step()`` calls. With a stepped
        optimizer the loop is taken to have stepped the scheduler every ``scheduler_every`` of
        its steps from its first (``step % scheduler_every`` steps into the current period).
      steps: the run length in optimizer steps the schedule is tabulated for (optional for
        OneCycleLR); past it the lr is NaN.
      max_grad_norm: also clip like ``clip_grad_norm_(module.parameters(), max_grad_norm)``
        called before every ``optimizer.step()``.

    Returns:
      an ``optax.GradientTransformation`` for ``variables['params']`` of the Flax port.

    Raises:
      NotImplementedError: a setting, optimizer or scheduler with no exact counterpart, named.
      ValueError: several groups, frozen parameters or state without ``module``; optimizer
        parameters that are not the module's; a scheduler of another optimizer.
    """
    name = _optimizer_name(optimizer)
    _check_schedulers(optimizer, scheduler)
    groups = optimizer.param_groups
    for i, g in enumerate(groups):
        _check_group(name, i, g, scheduler is not None)
    counts = group_counts(optimizer, name)
    stepped = any(counts) or (name != "Adagrad" and bool(optimizer.state))
    tables: list[Any] = [None] * len(groups)
    if scheduler is not None:
        every = int(scheduler_every)
        n0 = max(counts, default=0)
        if name == "SGD" and n0 and every > 1:
            raise ValueError(
                "SGD keeps no step count, so where a stepped SGD stands within the "
                f"scheduler_every={every} steps between two scheduler.step() calls is unknown; "
                "convert it fresh, or step its scheduler every step (scheduler_every=1)"
            )
        phase = n0 % every if every > 0 else 0
        per_group = schedule_tables(scheduler, every, steps, phase)
        tables = [
            {k: t.shifted(c) for k, t in tg.items()}
            for tg, c in zip(per_group, counts, strict=True)
        ]
    txs = {
        f"group{i}": _group_transform(name, i, g, tables[i], optimizer)
        for i, g in enumerate(groups)
    }
    if module is None:
        frozen = [i for i, g in enumerate(groups) for p in g["params"] if not p.requires_grad]
        if len(groups) > 1 or frozen or stepped:
            raise ValueError(
                f"the optimizer has {len(groups)} param groups"
                + (f", parameters with requires_grad=False in groups {frozen}" if frozen else "")
                + (", state from steps already taken" if stepped else "")
                + "; pass the torch module too (from_torch(optimizer, module)) so that each "
                "Flax parameter can be matched to its torch parameter"
            )
        tx = txs["group0"]
    else:
        txs = {k: carried_init(tx, optimizer, i, module) for i, (k, tx) in enumerate(txs.items())}
        labels = _labels(optimizer, module)
        used = set(traverse_util.flatten_dict(labels).values())
        if used == {"group0"}:
            tx = txs["group0"]
        else:
            txs = {k: v for k, v in txs.items() if k in used}
            if _FROZEN in used:
                txs[_FROZEN] = optax.set_to_zero()
            tx = optax.multi_transform(txs, labels)
    if max_grad_norm is not None:
        tx = optax.chain(clip_grad_norm(max_grad_norm), tx)
    return tx


def _labels(optimizer: Any, module: Any) -> dict[str, Any]:
    """The group label ('group0', ...) of every Flax parameter of ``module``, nested like
    ``variables['params']``; 'frozen' where torch never updates the parameter."""
    group_of: dict[int, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            group_of[id(p)] = i
    flat: dict[tuple[str, ...], str] = {}
    seen: set[int] = set()
    for path, tensor in param_paths(module).items():
        if tensor is None:
            raise NotImplementedError(
                f"the Flax parameter {'/'.join(path)} is built from several torch parameters; "
                f"from_torch cannot give it one param group"
            )
        seen.add(id(tensor))
        i = group_of.get(id(tensor))
        trainable = i is not None and tensor.requires_grad
        flat[path] = f"group{i}" if trainable else _FROZEN
    foreign = [
        (i, tuple(p.shape))
        for i, group in enumerate(optimizer.param_groups)
        for p in group["params"]
        if id(p) not in seen
    ]
    if foreign:
        raise ValueError(
            f"the optimizer holds parameters that are not parameters of "
            f"{type(module).__name__} (group index, shape): {foreign}"
        )
    return traverse_util.unflatten_dict(flat)
