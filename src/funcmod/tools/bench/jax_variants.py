"""The JAX variants of one case, each a ``Variant`` already called once:

* ``flax_step``: ``funcmod.train.make_train_step(mse)``, jitted, state donated;
* ``flax_bound``: ``funcmod.bound_step.bind_train_step(mse, state)``, the same step with the
  state held as a list of leaves between steps (``TrainState`` built only on request);
* ``flax_scan``: ``funcmod.train.make_train_epoch(mse)``, K steps in one ``lax.scan`` dispatch;
* ``pure_jax``: a hand-written step of the same model, ``jax.jit`` of ``value_and_grad`` and the
  same optax update on a raw params dict, no ``TrainState``: what funcmod's step is measured
  against (its overhead is ``flax_step / pure_jax - 1``).

The jitted functions are built once (``jitted_steps``) and shared by every case, so that each
compiles once per model and shape and the timed calls reuse that compile. A variant's first call
is timed apart, with its trace, lowering and XLA compile times. Steps are dispatched
asynchronously, as in a training loop; ``run(n)`` blocks on the last result only.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcmod.articles.catalog import Example
from funcmod.tools.bench.config import BenchConfig
from funcmod.tools.bench.timing import CompileCounter
from funcmod.tools.bench.variants import CaseData, Variant, twin_and_optimizer

__all__ = ["JittedSteps", "StepCost", "jitted_steps", "make_jax_variants"]


def _pure_step(
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    inputs: tuple[jax.Array, ...],
    targets: jax.Array,
) -> tuple[Any, Any, jax.Array]:
    """The hand-written training step funcmod's is compared with: a raw params dict."""

    from funcmod.train import mse

    def loss_of(p: Any) -> jax.Array:
        return mse(apply_fn({"params": p}, *inputs), targets)

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


class JittedSteps(NamedTuple):
    """The jitted functions every case reuses (each compiles once per model and shape)."""

    train_step: Callable[..., Any]  # funcmod.train.make_train_step(mse)
    train_epoch: Callable[..., Any]  # funcmod.train.make_train_epoch(mse)
    pure_step: Callable[..., Any]  # _pure_step; apply_fn and tx static, params donated


@functools.cache
def jitted_steps() -> JittedSteps:
    """The benchmark's jitted steps, built on first use and then shared by every case."""
    from funcmod.train import make_train_epoch, make_train_step, mse

    return JittedSteps(
        train_step=make_train_step(mse),
        train_epoch=make_train_epoch(mse),
        pure_step=jax.jit(_pure_step, static_argnums=(0, 1), donate_argnums=(2, 3)),
    )


def _first_call(call: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """The seconds of ``call()`` (which compiles) and their JAX breakdown by compile phase."""
    with CompileCounter() as counter:
        t0 = time.perf_counter()
        call()
        seconds = time.perf_counter() - t0
    return seconds, dict(counter.seconds)


class StepCost(NamedTuple):
    """XLA's cost analysis of the compiled ``flax_step``: its FLOPs and the bytes its
    operations read and write."""

    flops: float
    bytes_accessed: float


def make_jax_variants(
    ex: Example, data: CaseData, config: BenchConfig
) -> tuple[dict[str, Variant], StepCost]:
    """The JAX variants of ``config.jax_variants``, each already called once (that first call
    traces and compiles); and XLA's cost analysis of one ``flax_step``.

    The FLOP count is XLA's cost analysis of the compiled step: the work in XLA's program,
    recomputation included. It is the one count every variant's GFLOP/s are computed from.
    """
    from funcmod.convert import torch_to_flax
    from funcmod.optim import from_torch
    from funcmod.train import create_train_state

    twin, opt = twin_and_optimizer(ex, config.optimizer, config.seed)
    tx = from_torch(opt, twin)
    model = ex.flax_module()
    variables = torch_to_flax(twin)
    batch = (data.flax_inputs, data.flax_targets)
    variants: dict[str, Variant] = {}

    # flax_step: funcmod.train.make_train_step, the state donated and replaced every step.
    holder = {"state": create_train_state(model, variables, tx)}
    train_step = jitted_steps().train_step

    def step_once() -> jax.Array:
        holder["state"], metrics = train_step(holder["state"], batch)
        return metrics["loss"]

    def run_steps(n: int) -> None:
        for _ in range(n):
            loss = step_once()
        jax.block_until_ready((holder["state"].params, loss))

    seconds, detail = _first_call(lambda: jax.block_until_ready(step_once()))
    variants["flax_step"] = Variant(run_steps, 1, seconds, detail)
    compiled = train_step.lower(holder["state"], batch).compile()  # the cached executable
    analysis = compiled.cost_analysis()
    cost = StepCost(float(analysis["flops"]), float(analysis.get("bytes accessed", 0.0)))

    if "flax_bound" in config.jax_variants:
        variants["flax_bound"] = _bound_variant(model, variables, tx, batch)
    if "flax_scan" in config.jax_variants:
        variants["flax_scan"] = _scan_variant(model, variables, tx, batch, config)
    if "pure_jax" in config.jax_variants:
        variants["pure_jax"] = _pure_variant(model, variables, tx, data)
    return variants, cost


def _bound_variant(
    model: Any, variables: Any, tx: optax.GradientTransformation, batch: Any
) -> Variant:
    """bind_train_step: the state stays inside the step object between calls."""
    from funcmod.bound_step import bind_train_step
    from funcmod.train import create_train_state, mse

    bound = bind_train_step(mse, create_train_state(model, variables, tx))

    def run_bound(n: int) -> None:
        for _ in range(n):
            metrics = bound(batch)
        # the loss and the held state come out of the same execution: waiting for the loss
        # waits for both, without building a TrainState inside the timed run
        jax.block_until_ready(metrics)

    seconds, detail = _first_call(lambda: jax.block_until_ready(bound(batch)))
    return Variant(run_bound, 1, seconds, detail)


def _scan_variant(
    model: Any, variables: Any, tx: optax.GradientTransformation, batch: Any, config: BenchConfig
) -> Variant:
    """make_train_epoch over K copies of the batch, one dispatch per K steps."""
    from funcmod.train import create_train_state

    batch_bytes = sum(x.nbytes for x in jax.tree.leaves(batch))
    k = max(2, min(config.scan_steps, config.scan_bytes // max(batch_bytes, 1)))
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)).copy(), batch)
    scan_holder = {"state": create_train_state(model, variables, tx)}
    train_epoch = jitted_steps().train_epoch

    def epoch_once() -> jax.Array:
        scan_holder["state"], metrics = train_epoch(scan_holder["state"], stacked)
        return metrics["loss"]

    def run_epochs(n: int) -> None:
        for _ in range(math.ceil(n / k)):
            losses = epoch_once()
        jax.block_until_ready((scan_holder["state"].params, losses))

    seconds, detail = _first_call(lambda: jax.block_until_ready(epoch_once()))
    return Variant(run_epochs, k, seconds, detail)


def _pure_variant(
    model: Any, variables: Any, tx: optax.GradientTransformation, data: CaseData
) -> Variant:
    """The hand-written step, params and optimizer state as raw pytrees."""
    params = jax.tree.map(jnp.array, variables["params"])
    pure = {"params": params, "opt_state": tx.init(params)}

    def pure_once() -> jax.Array:
        pure["params"], pure["opt_state"], loss = jitted_steps().pure_step(
            model.apply, tx, pure["params"], pure["opt_state"], data.flax_inputs, data.flax_targets
        )
        return loss

    def run_pure(n: int) -> None:
        for _ in range(n):
            loss = pure_once()
        jax.block_until_ready((pure["params"], loss))

    seconds, detail = _first_call(lambda: jax.block_until_ready(pure_once()))
    return Variant(run_pure, 1, seconds, detail)
