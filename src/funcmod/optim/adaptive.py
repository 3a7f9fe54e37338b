"""torch's RMSprop, Adagrad, Adamax, NAdam, RAdam and Adadelta steps as optax transformations.

Each follows torch's single-tensor implementation (the one torch runs on CPU) operation by
operation: the same order, the same Python-float scalars (computed in the widest JAX float and
rounded to the leaf's dtype), the same state under torch's names. Where optax has the same
optimizer, docs/pitfalls.md measures how it differs (eps placement, bias correction, weight-decay
coupling). An update torch makes by changing ``p`` in several steps is returned as
``new_p - p``, so that ``p + update`` is torch's new ``p`` (the subtraction is exact while the
new value is within a factor 2 of the old).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from funcmod.optim.transforms import (
    Hyper,
    bias_correction,
    cast,
    derive,
    hyper,
    per_leaf_transform,
    power,
    wide,
)

__all__ = [
    "torch_adadelta",
    "torch_adagrad",
    "torch_adamax",
    "torch_nadam",
    "torch_radam",
    "torch_rmsprop",
]


def _zeros(p: Any) -> Any:
    return jnp.zeros_like(p)


def _l2(g: Any, p: Any, wd: float) -> Any:
    return g + wd * p if wd != 0 else g


def torch_rmsprop(
    lr: Hyper,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: Hyper = 0.0,
    *,
    centered: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.RMSprop``: ``v = alpha v + (1 - alpha) g^2``, eps added after the square
    root (``optax.rmsprop`` adds it inside), centered subtracts the squared running mean of g,
    momentum keeps ``buf = m buf + g / avg``; the update is ``-lr * buf`` or
    ``(-lr * g) / avg``. State: ``square_avg`` (``grad_avg``, ``momentum_buffer``)."""
    has_momentum = not isinstance(momentum, float | int) or momentum > 0
    slots = {"square_avg": _zeros}
    if centered:
        slots["grad_avg"] = _zeros
    if has_momentum:
        slots["momentum_buffer"] = _zeros

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        g = _l2(g, p, weight_decay)
        sq = alpha * bufs["square_avg"] + (1 - alpha) * g * g
        out = {"square_avg": sq}
        if centered:
            ga = bufs["grad_avg"]
            ga = out["grad_avg"] = ga + (1 - alpha) * (g - ga)
            avg = jnp.sqrt(sq - ga * ga) + eps
        else:
            avg = jnp.sqrt(sq) + eps
        lr_t = cast(hyper(lr, count - 1), dt)
        if has_momentum:
            buf = cast(hyper(momentum, count - 1), dt) * bufs["momentum_buffer"] + g / avg
            out["momentum_buffer"] = buf
            return -lr_t * buf, out
        return (-lr_t * g) / avg, out

    return per_leaf_transform(slots, step, needs_params=weight_decay != 0, name="RMSprop")


def torch_adagrad(
    lr: Hyper,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
) -> optax.GradientTransformation:
    """``torch.optim.Adagrad``: ``sum += g^2``, update ``(-clr * g) / (sqrt(sum) + eps)`` with
    ``clr = lr / (1 + (t - 1) lr_decay)``. ``optax.adagrad`` puts eps inside the square root and
    has no ``lr_decay``. State: ``sum``, starting at ``initial_accumulator_value``."""
    init_value = float(initial_accumulator_value)

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        g = _l2(g, p, weight_decay)
        s = bufs["sum"] + g * g
        clr = hyper(lr, count - 1) / (1 + (count - 1).astype(wide()) * lr_decay)
        return (-cast(clr, dt) * g) / (jnp.sqrt(s) + eps), {"sum": s}

    return per_leaf_transform(
        {"sum": lambda p: jnp.full_like(p, init_value)},
        step,
        needs_params=weight_decay != 0,
        name="Adagrad",
    )


def torch_adamax(
    lr: Hyper, b1: Hyper = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """``torch.optim.Adamax``: ``u = max(b2 u, |g| + eps)`` (eps inside the max; optax adds it
    to the denominator), update ``(-(lr / (1 - b1^t)) m) / u``. State: ``exp_avg``,
    ``exp_inf``."""

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        beta1 = hyper(b1, count - 1)
        g = _l2(g, p, weight_decay)
        m = bufs["exp_avg"]
        m = m + cast(1 - beta1, dt) * (g - m)
        u = jnp.maximum(bufs["exp_inf"] * b2, jnp.abs(g) + eps)
        clr = cast(hyper(lr, count - 1) / bias_correction(beta1, count), dt)
        return (-clr * m) / u, {"exp_avg": m, "exp_inf": u}

    return per_leaf_transform(
        {"exp_avg": _zeros, "exp_inf": _zeros},
        step,
        needs_params=weight_decay != 0,
        name="Adamax",
    )


def torch_nadam(
    lr: Hyper,
    b1: Hyper = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    *,
    decoupled: bool = False,
    mu_product_dtype: Any = np.float32,
) -> optax.GradientTransformation:
    """``torch.optim.NAdam`` (Dozat's momentum schedule ``mu_t = b1 (1 - 0.96^(t psi) / 2)``).

    torch keeps the running product of the ``mu_t`` in a () tensor of its default scalar dtype
    (float32 unless the default dtype is float64), whatever the parameters' dtype: the product
    is rounded to ``mu_product_dtype`` every step here too. optax's ``nadam`` has no momentum
    schedule. State: ``exp_avg``, ``exp_avg_sq``, ``mu_product``.
    """
    decay_factor = derive(lr, lambda v: 1 - v * weight_decay)

    def scalar_step(scal, count):
        t = count.astype(wide())
        mu = hyper(b1, count - 1) * (1.0 - 0.5 * jnp.asarray(0.96, wide()) ** (t * momentum_decay))
        prod = scal["mu_product"] * jnp.asarray(mu).astype(mu_product_dtype)
        return {"mu_product": prod.astype(mu_product_dtype)}

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        t = count.astype(wide())
        beta1 = hyper(b1, count - 1)
        lr_t = hyper(lr, count - 1)
        mu = beta1 * (1.0 - 0.5 * jnp.asarray(0.96, wide()) ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * jnp.asarray(0.96, wide()) ** ((t + 1) * momentum_decay))
        prod = scal["mu_product"].astype(wide())
        start = p
        if weight_decay != 0:
            if decoupled:
                start = p * cast(hyper(decay_factor, count - 1), dt)
            else:
                g = g + weight_decay * p
        m = bufs["exp_avg"]
        m = m + cast(1 - beta1, dt) * (g - m)
        v = b2 * bufs["exp_avg_sq"] + (1 - b2) * g * g
        denom = jnp.sqrt(v / cast(bias_correction(b2, count), dt)) + eps
        c_grad = cast(-lr_t * (1.0 - mu) / (1.0 - prod), dt)
        c_avg = cast((-lr_t * mu_next) / (1.0 - prod * mu_next), dt)
        new_p = (start + (c_grad * g) / denom) + (c_avg * m) / denom
        return new_p - p, {"exp_avg": m, "exp_avg_sq": v}

    return per_leaf_transform(
        {"exp_avg": _zeros, "exp_avg_sq": _zeros},
        step,
        scalars={"mu_product": lambda: jnp.ones((), mu_product_dtype)},
        scalar_step=scalar_step,
        needs_params=True,
        name="NAdam",
    )


def torch_radam(
    lr: Hyper,
    b1: Hyper = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    decoupled: bool = False,
) -> optax.GradientTransformation:
    """``torch.optim.RAdam``: Adam's moments, and while the variance estimate is not yet
    tractable (``rho_t <= 5``, the first few steps) plain momentum SGD on the bias-corrected
    mean; after that ``m_hat * lr * adaptive * rect``, multiplied in that order.
    State: ``exp_avg``, ``exp_avg_sq``."""
    decay_factor = derive(lr, lambda v: 1 - v * weight_decay)
    rho_inf = 2 / (1 - b2) - 1
    rect_table = _radam_rect_table(b2, rho_inf)

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        beta1 = hyper(b1, count - 1)
        start = p
        if weight_decay != 0:
            if decoupled:
                start = p * cast(hyper(decay_factor, count - 1), dt)
            else:
                g = g + weight_decay * p
        m = bufs["exp_avg"]
        m = m + cast(1 - beta1, dt) * (g - m)
        v = b2 * bufs["exp_avg_sq"] + (1 - b2) * g * g
        bc2 = bias_correction(b2, count)
        m_hat = m / cast(bias_correction(beta1, count), dt)
        rect = _radam_rect(b2, rho_inf, count, rect_table)
        adaptive = cast(jnp.sqrt(bc2), dt) / (jnp.sqrt(v) + eps)
        lr_t = cast(hyper(lr, count - 1), dt)
        rectified = m_hat * lr_t * adaptive * cast(rect, dt)
        new_p = start - jnp.where(rect > 0, rectified, m_hat * lr_t)
        return new_p - p, {"exp_avg": m, "exp_avg_sq": v}

    return per_leaf_transform(
        {"exp_avg": _zeros, "exp_avg_sq": _zeros}, step, needs_params=True, name="RAdam"
    )


_RECT_TABLE_STEPS = 4096


def _radam_rect_table(b2: float, rho_inf: float) -> np.ndarray:
    """RAdam's rectification factor for steps 1..4096 in Python floats, torch's arithmetic
    (0 where ``rho_t <= 5``). ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)`` cancels badly while
    it is small: in float32 the factor would be off by 1e-5 relative around step 6."""
    out = np.zeros(_RECT_TABLE_STEPS, np.float64)
    for t in range(1, _RECT_TABLE_STEPS + 1):
        rho_t = rho_inf - 2 * t * (b2**t) / (1 - b2**t)
        if rho_t > 5.0:
            out[t - 1] = (
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            ) ** 0.5
    return out


def _radam_rect(b2: float, rho_inf: float, count: Any, table: np.ndarray) -> Any:
    """The rectification factor at step ``count`` (after incrementing), 0 while ``rho_t <= 5``:
    from the table, past it (where ``rho_t`` is large and accurate) computed."""
    t = count.astype(wide())
    rho_t = rho_inf - 2 * t * power(b2, count) / bias_correction(b2, count)
    safe = jnp.where(rho_t > 5.0, rho_t, 6.0)
    rect = jnp.sqrt((safe - 4) * (safe - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * safe))
    rect = jnp.where(rho_t > 5.0, rect, 0.0)
    tab = jnp.asarray(table.astype(wide()))[jnp.clip(count - 1, 0, _RECT_TABLE_STEPS - 1)]
    return jnp.where(count <= _RECT_TABLE_STEPS, tab, rect)


def torch_adadelta(
    lr: Hyper = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """``torch.optim.Adadelta``: ``delta = sqrt(acc + eps) / sqrt(sq + eps) * g``, update
    ``-lr * delta`` (torch keeps an ``lr``, 1.0 by default). State: ``square_avg``,
    ``acc_delta``."""

    def step(g, p, bufs, count, scal):
        dt = g.dtype
        g = _l2(g, p, weight_decay)
        sq = rho * bufs["square_avg"] + (1 - rho) * g * g
        delta = jnp.sqrt(bufs["acc_delta"] + eps) / jnp.sqrt(sq + eps) * g
        acc = rho * bufs["acc_delta"] + (1 - rho) * delta * delta
        return -cast(hyper(lr, count - 1), dt) * delta, {"square_avg": sq, "acc_delta": acc}

    return per_leaf_transform(
        {"square_avg": _zeros, "acc_delta": _zeros},
        step,
        needs_params=weight_decay != 0,
        name="Adadelta",
    )
