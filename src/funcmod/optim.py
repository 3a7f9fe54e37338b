"""optax transformations that update exactly like a given ``torch.optim`` optimizer.

``from_torch(optimizer, module)`` reads the optimizer's param groups and returns the optax
transformation that makes the same updates to the Flax port's parameters::

    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    tx = from_torch(opt, twin)          # chain(add_decayed_weights(1e-4), sgd(0.01, 0.9))

What each torch optimizer becomes (checked against both libraries' sources):

* ``SGD(lr, momentum, nesterov, weight_decay)``: ``chain(add_decayed_weights(wd),
  sgd(lr, momentum, nesterov))``. torch adds ``wd * p`` to the gradient before the momentum, as
  the chain does. torch's first momentum buffer is the gradient itself and later ones are
  ``m * buf + g`` (with dampening 0); optax's trace starts at zeros and is ``g + m * trace``,
  so its first value is ``g`` too. Nesterov is ``g + m * buf`` in both. With
  ``dampening != 0`` (``m * buf + (1 - d) * g``, skipped on the first step) it is
  ``chain(torch_momentum(m, d), scale(-lr))``: optax's trace has no dampening.
* ``Adam(lr, betas, eps, weight_decay, amsgrad)`` and ``AdamW(...)`` (or
  ``Adam(decoupled_weight_decay=True)``): ``torch_adam(...)``, torch's Adam step written out as
  one optax transformation. It is ``optax.adam``'s algorithm (L2 decay added to the gradient
  before the moments; ``sqrt(v / (1 - b2**t)) + eps``, eps outside the square root, optax's
  ``eps_root`` 0), but ``optax.adam``/``adamw`` cannot be used as they are:

  - they compute ``1 - b2**t`` in the parameters' dtype; in float32 that is off by 1.3e-5
    (``1 - float32(0.999)``), so every step is 6e-6 too large or small compared with torch,
    which computes it in Python floats (MLP, Adam, 200 steps: 2.3e-5 max relative parameter
    error, against 3e-7 with ``torch_adam``);
  - ``decay**count`` mixes a Python float with the int32 count, which JAX's strict dtype
    promotion rejects;
  - AdamW: torch multiplies ``p`` by the Python float ``1 - lr * wd`` rounded to ``p``'s dtype;
    in float32 that factor is off by up to 3e-8, 0.3% of a 1e-5 decay, the same every step.
    ``torch_adam`` uses the same rounded factor (MLP, AdamW, 200 steps: with ``lr * wd * p``
    4e-6 in float32 and 1.1e-14 in float64, with torch's factor 1.3e-6 and 3.5e-15);
  - ``optax.amsgrad`` keeps the maximum of the bias-corrected second moment, torch the maximum
    of the raw one, bias-corrected afterwards.

Several param groups become ``optax.multi_transform`` with one transformation per group, labelled
by which torch parameters are in which group (mapped to Flax paths by ``funcmod.convert``);
parameters in no group, or with ``requires_grad=False``, are not updated (torch skips them).
A parameter that the loss does not reach is the one case this cannot see: torch leaves its
``.grad`` None and skips it (no weight decay, no momentum), ``jax.grad`` gives it zeros, which
the transformation still decays and feeds to the momentum.
``max_grad_norm`` puts ``clip_grad_norm`` (``torch.nn.utils.clip_grad_norm_``) first.

Settings that cannot be reproduced exactly raise ``NotImplementedError`` naming the setting:
``maximize``, ``differentiable``, an lr scheduler, another optimizer class, an unknown
param-group key; ``ValueError`` for an optimizer that has already stepped (its
state is not carried over).

Bitwise equality with torch is not possible: XLA on CPU contracts ``a * b + c`` into one fused
multiply-add (one rounding, where torch's separate ops round twice), and the two libraries sum
the terms of a matmul or convolution in different orders. The updates agree to the last few
ulps; ``funcmod.trajectory`` measures how that grows over whole training runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

if TYPE_CHECKING:
    import torch

__all__ = ["TorchAdamState", "clip_grad_norm", "from_torch", "torch_adam", "torch_momentum"]

_SGD_KEYS = {"params", "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"}
_ADAM_KEYS = {"params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"}
_ADAM_KEYS |= {"decoupled_weight_decay"}
# Implementation choices that leave the arithmetic alone (differentiable is checked apart).
_IMPLEMENTATION_KEYS = {"foreach", "fused", "capturable", "differentiable"}
_FROZEN = "frozen"


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale all gradients by ``min(max_norm / (total_norm + 1e-6), 1)``, exactly as
    ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` (2-norm) does.

    ``total_norm`` is the 2-norm of the per-leaf 2-norms, torch's order of operations; the
    ``1e-6`` is torch's, so gradients whose norm is exactly ``max_norm`` are scaled slightly
    (``optax.clip_by_global_norm`` has no such term). Put it first in a chain, where torch calls
    it: on the raw gradients, before any weight decay or momentum.
    """
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, Any]:
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        norms = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g))) for g in leaves])  # (n_leaves,)
        total = jnp.sqrt(jnp.sum(jnp.square(norms)))
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef, updates), state

    return optax.GradientTransformation(init, update)


def _scalar(value: Any) -> float:
    return float(value)  # a Python float, or a one-element tensor (torch allows tensor lr)


def _check_group(name: str, i: int, group: dict[str, Any], allowed: set[str]) -> None:
    where = f"{name} param group {i}"
    if "initial_lr" in group:
        raise NotImplementedError(
            f"{where} has 'initial_lr': an lr scheduler is attached; schedulers are not "
            f"translated, so the learning rate would silently stay constant"
        )
    unknown = sorted(set(group) - allowed - _IMPLEMENTATION_KEYS)
    if unknown:
        raise NotImplementedError(
            f"{where} has settings from_torch does not know: {unknown}; expected only "
            f"{sorted(allowed | _IMPLEMENTATION_KEYS)}"
        )
    if group.get("maximize", False):
        raise NotImplementedError(f"{where}: maximize=True is not supported (negate the loss)")
    if group.get("differentiable", False):
        raise NotImplementedError(
            f"{where}: differentiable=True makes the torch step part of the autograd graph; "
            f"an optax transformation cannot reproduce that"
        )


def torch_momentum(momentum: float, dampening: float) -> optax.GradientTransformation:
    """torch's SGD momentum buffer with dampening, as a transformation that outputs the buffer.

    torch sets the buffer to the gradient itself on the first step and to
    ``momentum * buf + (1 - dampening) * g`` after that: the dampening is skipped once.
    ``optax.trace`` has no dampening. (torch forbids nesterov with dampening, so there is no
    nesterov variant.) Follow it with ``optax.scale(-lr)``.
    """

    def init(params: Any) -> tuple[jax.Array, Any]:
        return jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params)

    def update(grads: Any, state: tuple[jax.Array, Any], params: Any = None):
        del params
        count, buf = state
        buf = jax.tree.map(
            lambda b, g: jnp.where(count == 0, g, momentum * b + (1 - dampening) * g), buf, grads
        )
        return buf, (count + 1, buf)

    return optax.GradientTransformation(init, update)


def _sgd(i: int, group: dict[str, Any]) -> optax.GradientTransformation:
    _check_group("SGD", i, group, _SGD_KEYS)
    momentum = _scalar(group["momentum"])
    lr = _scalar(group["lr"])
    if momentum and _scalar(group["dampening"]) != 0:  # torch rules out nesterov here
        tx = optax.chain(torch_momentum(momentum, _scalar(group["dampening"])), optax.scale(-lr))
    else:  # dampening is only read with momentum; without it optax.sgd is torch's update
        tx = optax.sgd(lr, momentum or None, nesterov=bool(group["nesterov"]))
    wd = _scalar(group["weight_decay"])
    return optax.chain(optax.add_decayed_weights(wd), tx) if wd != 0 else tx


class TorchAdamState(NamedTuple):
    """State of ``torch_adam``: torch's ``step``, ``exp_avg``, ``exp_avg_sq`` and
    ``max_exp_avg_sq`` (an empty tuple without amsgrad)."""

    count: jax.Array  # () int32
    mu: Any
    nu: Any
    nu_max: Any


def _bias_correction(decay: float, count: jax.Array, dtype: Any) -> jax.Array:
    """``1 - decay**count`` in ``dtype``, accurate to a few ulp.

    torch computes it in Python floats (float64). Computed directly in float32 it loses the
    low bits of ``1 - 0.999`` (a relative error of 1.3e-5 in ``1 - b2**t`` for every t up to a
    few hundred, which biases every Adam step by 6e-6); ``-expm1(t * log(decay))`` does not.
    """
    if decay == 0:  # torch allows betas of 0: 1 - 0**t is 1 for every t >= 1
        return jnp.ones((), dtype)
    return -jnp.expm1(count.astype(dtype) * jnp.asarray(math.log(decay), dtype))


def torch_adam(
    lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    decoupled: bool = False,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """torch's Adam/AdamW step (``torch.optim.adam._single_tensor_adam``) as one transformation.

    Per leaf, with ``t`` the step count after incrementing::

        g = g + wd * p                       (Adam: L2 in the gradient)
        m = m + (1 - b1) * (g - m)           (torch's lerp)
        v = b2 * v + (1 - b2) * g * g
        v_max = max(v_max, v)                (amsgrad: the max of the raw v)
        denom = sqrt(v or v_max) / sqrt(1 - b2**t) + eps
        update = (-(lr / (1 - b1**t)) * m) / denom
        update = (p * (1 - lr * wd) + update) - p     (AdamW: torch decays p first)

    This is ``optax.adam``'s algorithm; the module docstring says why it is written out.

    Args:
      lr, b1, b2, eps, weight_decay: torch's ``lr``, ``betas``, ``eps``, ``weight_decay``.
      decoupled: AdamW's decoupled weight decay instead of Adam's L2 term.
      amsgrad: torch's AMSGrad variant.

    Returns:
      a transformation whose ``update(grads, state, params)`` needs ``params`` when
      ``weight_decay`` is not 0. Its state is a ``TorchAdamState``.
    """

    decay_factor = 1 - lr * weight_decay  # a Python float, as in torch

    def init(params: Any) -> TorchAdamState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return TorchAdamState(
            jnp.zeros((), jnp.int32), zeros(), zeros(), zeros() if amsgrad else ()
        )

    def update(grads: Any, state: TorchAdamState, params: Any = None) -> tuple[Any, Any]:
        if weight_decay != 0 and params is None:
            raise ValueError("torch_adam with weight_decay needs the params in update()")
        count = state.count + 1
        if weight_decay != 0 and not decoupled:
            grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
        mu = jax.tree.map(lambda g, m: m + (1 - b1) * (g - m), grads, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, grads, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else ()
        second = nu_max if amsgrad else nu

        def step(m: jax.Array, v: jax.Array, p: Any) -> jax.Array:
            step_size = lr / _bias_correction(b1, count, m.dtype)
            denom = jnp.sqrt(v) / jnp.sqrt(_bias_correction(b2, count, m.dtype)) + eps
            u = (-step_size * m) / denom  # torch's addcdiv: (value * t1) / t2
            if decoupled and weight_decay != 0:
                # torch first multiplies p by (1 - lr * wd), a Python float rounded to p's
                # dtype (in float32 off by up to 3e-8, 0.3% of the decay, the same every
                # step), then adds u. Return torch's new p minus p; p + that is torch's new p
                # up to the last ulp (the subtraction is exact when the new p is within 2x of
                # p, but XLA may fuse p * factor + u into one fused multiply-add).
                u = (p * jnp.asarray(decay_factor, p.dtype) + u) - p
            return u

        ps = params if params is not None else mu  # p is read only for decoupled decay
        updates = jax.tree.map(step, mu, second, ps)
        return updates, TorchAdamState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def _adam(i: int, group: dict[str, Any], decoupled: bool) -> optax.GradientTransformation:
    name = "AdamW" if decoupled else "Adam"
    _check_group(name, i, group, _ADAM_KEYS)
    b1, b2 = (_scalar(b) for b in group["betas"])
    return torch_adam(
        _scalar(group["lr"]),
        b1,
        b2,
        _scalar(group["eps"]),
        _scalar(group["weight_decay"]),
        decoupled=decoupled or bool(group.get("decoupled_weight_decay", False)),
        amsgrad=bool(group["amsgrad"]),
    )


def _group_transform(
    optimizer: torch.optim.Optimizer, i: int, group: dict[str, Any]
) -> optax.GradientTransformation:
    import torch

    kind = type(optimizer)
    if kind is torch.optim.SGD:
        return _sgd(i, group)
    if kind is torch.optim.AdamW:
        return _adam(i, group, decoupled=True)
    if kind is torch.optim.Adam:
        return _adam(i, group, decoupled=False)
    raise NotImplementedError(
        f"from_torch supports torch.optim.SGD, Adam and AdamW, not {kind.__module__}."
        f"{kind.__qualname__}"
    )


def _labels(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, Any]:
    """The group label ('group0', ...) of every Flax parameter of ``module``, nested like
    ``variables['params']``; 'frozen' where torch never updates the parameter."""
    from funcmod.convert import _entries

    group_of: dict[int, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            group_of[id(p)] = i
    flat: dict[tuple[str, ...], str] = {}
    seen: set[int] = set()
    for e in _entries(module):
        if e.flax_path[0] != "params":
            continue
        seen.add(id(e.tensor))
        i = group_of.get(id(e.tensor))
        trainable = i is not None and e.tensor.requires_grad
        flat[e.flax_path[1:]] = f"group{i}" if trainable else _FROZEN
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


def from_torch(
    optimizer: torch.optim.Optimizer,
    module: torch.nn.Module | None = None,
    *,
    max_grad_norm: float | None = None,
) -> optax.GradientTransformation:
    """The optax transformation that updates like ``optimizer``, for a fresh optimizer.

    Args:
      optimizer: a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` that has not stepped yet.
      module: the torch module whose parameters the optimizer holds. Needed when there are
        several param groups or parameters outside the optimizer, to label the Flax
        parameters (``variables['params']``) by group; optional with one group.
      max_grad_norm: also clip like ``clip_grad_norm_(module.parameters(), max_grad_norm)``
        called before every ``optimizer.step()``.

    Returns:
      an ``optax.GradientTransformation`` for ``variables['params']`` of the Flax port.

    Raises:
      NotImplementedError: a setting with no exact optax counterpart, named in the message.
      ValueError: the optimizer has already stepped, or several groups without ``module``, or
        optimizer parameters that are not the module's.
    """
    if optimizer.state:
        raise ValueError(
            "the optimizer has already stepped: its state (momentum buffers, moments, step "
            "counts) is not carried over; pass a fresh optimizer"
        )
    groups = optimizer.param_groups
    txs = {f"group{i}": _group_transform(optimizer, i, g) for i, g in enumerate(groups)}
    if module is None:
        frozen = [i for i, g in enumerate(groups) for p in g["params"] if not p.requires_grad]
        if len(groups) > 1 or frozen:
            raise ValueError(
                f"the optimizer has {len(groups)} param groups"
                + (f" and parameters with requires_grad=False in groups {frozen}" if frozen else "")
                + "; pass the torch module too (from_torch(optimizer, module)) so that each "
                "Flax parameter can be labelled with its group"
            )
        tx = txs["group0"]
    else:
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
