"""torch.optim's update rules written out as optax transformations, leaf by leaf.

Every transformation here keeps its state as a ``TorchOptState``: the step count torch keeps
per parameter (one count, the same for every leaf) and, by torch's own state names, the
per-parameter buffers (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ...), each a tree like
the parameters. That is what lets ``funcmod.optim.state`` carry a torch optimizer's state over,
both ways, by name.

A hyperparameter is a Python float or a ``StepTable`` (the value torch uses at each step, from
an lr scheduler). Scalars torch computes in Python floats (bias corrections, ``1 - lr * wd``)
are computed here in the widest float JAX has (float64 with x64 on) and then rounded to the
leaf's dtype, the way torch rounds a Python float when it meets a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "StepTable",
    "TorchAdamState",
    "TorchOptState",
    "clip_grad_norm",
    "per_leaf_transform",
    "torch_adam",
    "torch_momentum",
    "torch_sgd",
]

Hyper = Any  # float | StepTable


def wide() -> Any:
    """The float dtype torch's Python-float scalars are best computed in here."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


class StepTable:
    """A hyperparameter torch changes every ``every`` optimizer steps: ``values[k]`` is its value
    after ``k`` scheduler steps; optimizer step ``count`` (0-based) uses
    ``values[(count + phase) // every]``. Past the table it is NaN, so that a run longer than
    the one tabulated shows at once instead of silently holding the last value.

    Also an optax schedule: ``table(count)`` is that value as a () array.
    """

    def __init__(self, values: np.ndarray, every: int = 1, phase: int = 0, offset: int = 0):
        self.values = np.asarray(values, np.float64)  # (n,) torch's Python floats
        self.every, self.phase, self.offset = int(every), int(phase), int(offset)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> StepTable:
        """A derived table, computed in float64 like torch's Python floats."""
        return StepTable(fn(self.values), self.every, self.phase, self.offset)

    def shifted(self, offset: int) -> StepTable:
        """The same table for a count that starts at ``offset`` (a carried-over step count)."""
        return StepTable(self.values, self.every, self.phase, offset)

    def __call__(self, count: Any) -> jax.Array:
        idx = (jnp.asarray(count, jnp.int32) - self.offset + self.phase) // self.every
        n = self.values.shape[0]
        table = jnp.asarray(self.values.astype(wide()))
        value = table[jnp.clip(idx, 0, n - 1)]
        return jnp.where((idx >= 0) & (idx < n), value, jnp.nan)


def hyper(value: Hyper, count: jax.Array) -> Any:
    """The value at optimizer step ``count`` (0-based): a Python float or a () wide array."""
    return value(count) if isinstance(value, StepTable) else value


def derive(value: Hyper, fn: Callable[[Any], Any]) -> Hyper:
    """``fn(value)``, in float64 for both a float and a table (torch's Python-float arithmetic)."""
    return value.map(fn) if isinstance(value, StepTable) else fn(value)


def cast(x: Any, dtype: Any) -> Any:
    """A Python float stays one (JAX rounds it to the leaf's dtype); an array is cast."""
    return x if isinstance(x, float | int) else jnp.asarray(x).astype(dtype)


def power(base: float, count: jax.Array) -> Any:
    """``base ** count`` in the wide dtype (torch: a Python float power)."""
    return jnp.asarray(base, wide()) ** count.astype(wide())


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
    """``1 - decay**count`` in the wide dtype, accurate to a few ulp.

    torch computes it in Python floats. Computed directly in float32 it loses the low bits of
    ``1 - 0.999`` (1.3e-5 relative, which biases every Adam step by 6e-6);
    ``-expm1(t * log(decay))`` does not.
    """
    t = count.astype(wide())
    if isinstance(decay, float | int):
        if decay == 0:  # torch allows betas of 0: 1 - 0**t is 1 for every t >= 1
            return jnp.ones((), wide())
        return -jnp.expm1(t * math.log(decay))
    decay = jnp.asarray(decay, wide())
    return jnp.where(decay == 0, 1.0, -jnp.expm1(t * jnp.log(jnp.where(decay == 0, 1.0, decay))))


class TorchOptState(NamedTuple):
    """torch's optimizer state: ``count`` () int32, the ``step`` torch keeps per parameter, and
    ``slots``, torch's per-parameter buffers by torch's state key, each a tree like the params
    (a () array for a per-parameter scalar such as NAdam's ``mu_product``)."""

    count: jax.Array
    slots: dict[str, Any]


TorchAdamState = TorchOptState


def per_leaf_transform(
    slots: dict[str, Callable[[jax.Array], jax.Array]],
    step: Callable[..., tuple[jax.Array, dict[str, jax.Array]]],
    *,
    scalars: dict[str, Callable[[], jax.Array]] | None = None,
    scalar_step: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]] | None = None,
    needs_params: bool = False,
    name: str = "torch optimizer",
) -> optax.GradientTransformation:
    """A transformation that applies ``step`` to every leaf.

    Args:
      slots: torch state key -> ``init(param) -> buffer``.
      step: ``step(g, p, bufs, count, scal) -> (update, new_bufs)`` for one leaf, with ``count``
        the step count after incrementing (torch's ``step``), ``scal`` the scalar slots after
        ``scalar_step``.
      scalars: torch state key -> ``init() -> () array``, per-parameter scalars torch keeps
        (identical for every parameter, so kept once).
      scalar_step: ``(scalars, count) -> new scalars``, run before the leaves.
      needs_params: ``update`` raises without ``params``.
    """
    scalars = scalars or {}

    def init(params: Any) -> TorchOptState:
        out = {k: jax.tree.map(f, params) for k, f in slots.items()}
        out.update({k: f() for k, f in scalars.items()})
        return TorchOptState(jnp.zeros((), jnp.int32), out)

    def update(grads: Any, state: TorchOptState, params: Any = None) -> tuple[Any, Any]:
        if needs_params and params is None:
            raise ValueError(f"{name} with weight_decay needs the params in update()")
        count = state.count + 1
        scal = {k: state.slots[k] for k in scalars}
        if scalar_step is not None:
            scal = scalar_step(scal, count)
        treedef = jax.tree.structure(grads)
        g_leaves = treedef.flatten_up_to(grads)
        p_leaves = treedef.flatten_up_to(params) if params is not None else g_leaves
        buf_leaves = {k: treedef.flatten_up_to(state.slots[k]) for k in slots}
        ups, new = [], {k: [] for k in slots}
        for i, (g, p) in enumerate(zip(g_leaves, p_leaves, strict=True)):
            u, bufs = step(g, p, {k: buf_leaves[k][i] for k in slots}, count, scal)
            ups.append(u)
            for k in slots:
                new[k].append(bufs[k])
        out = {k: treedef.unflatten(v) for k, v in new.items()}
        out.update(scal)
        return treedef.unflatten(ups), TorchOptState(count, out)

    return optax.GradientTransformation(init, update)


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


def torch_momentum(momentum: float, dampening: float) -> optax.GradientTransformation:
    """torch's SGD momentum buffer with dampening, as a transformation that outputs the buffer.

    torch sets the buffer to the gradient itself on the first step and to
    ``momentum * buf + (1 - dampening) * g`` after that: the dampening is skipped once.
    ``optax.trace`` has no dampening. Follow it with ``optax.scale(-lr)``; ``torch_sgd`` is the
    whole SGD step.
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


def torch_sgd(
    lr: Hyper,
    momentum: Hyper = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """torch's SGD step (``torch.optim.sgd._single_tensor_sgd``)::

        g = g + wd * p
        buf = g (first step), momentum * buf + (1 - dampening) * g (later)
        g = g + momentum * buf (nesterov), buf (otherwise)
        update = -lr * g

    ``lr`` and ``momentum`` may be ``StepTable``s (a scheduler, ``cycle_momentum``).
    """
    has_momentum = isinstance(momentum, StepTable) or momentum != 0
    slots = {"momentum_buffer": jnp.zeros_like} if has_momentum else {}

    def step(g, p, bufs, count, scal):
        del scal
        dt = g.dtype
        if weight_decay != 0:
            g = g + weight_decay * p
        out = {}
        if has_momentum:
            m = cast(hyper(momentum, count - 1), dt)
            later = m * bufs["momentum_buffer"] + (1 - dampening) * g
            buf = jnp.where(count == 1, g, later)
            out["momentum_buffer"] = buf
            g = g + m * buf if nesterov else buf
        return -cast(hyper(lr, count - 1), dt) * g, out

    return per_leaf_transform(slots, step, needs_params=weight_decay != 0, name="torch_sgd")


def torch_adam(
    lr: Hyper,
    b1: Hyper = 0.9,
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

    This is ``optax.adam``'s algorithm; docs/pitfalls.md says why it is written out (bias
    correction in float32, AdamW's rounded decay factor, AMSGrad's max of the raw moment).

    Args:
      lr: torch's ``lr``; may be a ``StepTable`` (a scheduler).
      b1: torch's ``betas[0]``; may be a ``StepTable`` (``cycle_momentum``).
      b2: torch's ``betas[1]``.
      eps: torch's ``eps``.
      weight_decay: torch's ``weight_decay``.
      decoupled: AdamW's decoupled weight decay instead of Adam's L2 term.
      amsgrad: torch's AMSGrad variant.

    Returns:
      a transformation whose ``update(grads, state, params)`` needs ``params`` when
      ``weight_decay`` is not 0; its state a ``TorchOptState`` with ``exp_avg``, ``exp_avg_sq``
      (and ``max_exp_avg_sq``).
    """
    decay_factor = derive(lr, lambda v: 1 - v * weight_decay)  # a Python float, as in torch
    slots = {"exp_avg": jnp.zeros_like, "exp_avg_sq": jnp.zeros_like}
    if amsgrad:
        slots["max_exp_avg_sq"] = jnp.zeros_like

    def step(g, p, bufs, count, scal):
        del scal
        dt = g.dtype
        beta1 = hyper(b1, count - 1)
        if weight_decay != 0 and not decoupled:
            g = g + weight_decay * p
        m = bufs["exp_avg"]
        m = m + cast(1 - beta1, dt) * (g - m)
        v = b2 * bufs["exp_avg_sq"] + (1 - b2) * g * g
        out = {"exp_avg": m, "exp_avg_sq": v}
        second = v
        if amsgrad:
            second = out["max_exp_avg_sq"] = jnp.maximum(bufs["max_exp_avg_sq"], v)
        step_size = cast(hyper(lr, count - 1) / bias_correction(beta1, count), dt)
        denom = jnp.sqrt(second) / cast(jnp.sqrt(bias_correction(b2, count)), dt) + eps
        u = (-step_size * m) / denom  # torch's addcdiv: (value * t1) / t2
        if decoupled and weight_decay != 0:
            # torch first multiplies p by (1 - lr * wd), a Python float rounded to p's dtype,
            # then adds u: return torch's new p minus p.
            u = (p * cast(hyper(decay_factor, count - 1), dt) + u) - p
        return u, out

    return per_leaf_transform(slots, step, needs_params=weight_decay != 0, name="torch_adam")
