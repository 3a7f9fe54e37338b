"""A torch optimizer's state carried over to optax and back.

torch keeps, per parameter, a ``step`` count and named buffers (``momentum_buffer``,
``exp_avg``, ...); ``funcmod.optim.transforms.TorchOptState`` keeps one count per param group
and the same buffers by the same names, as trees shaped like the Flax parameters. Moving one
to the other is a rename and the layout change ``funcmod.convert`` applies to the weights
(a Linear's buffers are transposed like its kernel). SGD keeps no step count: its count is 1
once the momentum buffers exist, 0 before.

The layout change goes through ``funcmod.convert``'s public functions only, whatever its
internals: ``torch_grads_to_flax`` converts any per-parameter tensors put in the ``.grad``
slots (which ``param_paths`` and ``buffers_to_flax`` use, restoring the gradients after), and
``flax_to_torch`` converts back (``buffers_to_torch`` loads the buffers as weights, reads them
and puts the weights back).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from funcmod.optim.transforms import TorchOptState

if TYPE_CHECKING:
    import torch

__all__ = ["carried_init", "group_counts", "to_torch_state"]

_SCALARS = {"mu_product"}  # per-parameter scalars torch keeps; the same for every parameter


def _count_of(state: dict[str, Any], name: str) -> int:
    if name == "SGD":
        return int(state.get("momentum_buffer") is not None)
    return int(float(state["step"])) if "step" in state else 0


def group_counts(optimizer: torch.optim.Optimizer, name: str) -> list[int]:
    """The step count of each param group (0 for a fresh group).

    Raises:
      ValueError: parameters of one group with different counts (some skipped steps for lack
        of a gradient), which one count per group cannot carry.
    """
    counts = []
    for i, group in enumerate(optimizer.param_groups):
        seen = {
            _count_of(optimizer.state[p], name) for p in group["params"] if p in optimizer.state
        }
        if len(seen) > 1:
            raise ValueError(
                f"{name} param group {i} has parameters at different step counts {sorted(seen)} "
                f"(some had no gradient in some steps); the optax state keeps one count per group"
            )
        counts.append(seen.pop() if seen else 0)
    return counts


def _name_path(path: Any) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path)


def _swap_grads(module: torch.nn.Module, values: dict[int, Any]) -> dict[str, Any]:
    """``torch_grads_to_flax(module)['params']`` flattened, with ``values[id(p)]`` (zeros where
    absent) in the ``.grad`` slots; the gradients are put back."""
    import torch

    from funcmod.convert import torch_grads_to_flax

    params = list(module.parameters())
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = values.get(id(p), torch.zeros_like(p)).detach().to(p.dtype)
        out = torch_grads_to_flax(module)["params"]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return {k: np.array(v) for k, v in traverse_util.flatten_dict(out).items()}


def param_paths(module: torch.nn.Module) -> dict[tuple[str, ...], Any]:
    """The torch parameter behind each leaf of ``variables['params']`` (None for a leaf built
    from several parameters): each parameter's ``.grad`` is filled with its index + 1, and
    ``torch_grads_to_flax`` shows where each lands."""
    import torch

    params = list(module.parameters())
    marks = {id(p): torch.full_like(p, i + 1) for i, p in enumerate(params)}
    out = {}
    for path, leaf in _swap_grads(module, marks).items():
        seen = np.unique(leaf)
        out[path] = params[int(seen[0]) - 1] if seen.size == 1 and seen[0] >= 1 else None
    return out


def buffers_to_flax(module: torch.nn.Module, buffers: dict[int, Any]) -> dict[tuple, np.ndarray]:
    """Per-parameter tensors (by ``id`` of the parameter) in Flax's layout, by Flax path."""
    return _swap_grads(module, buffers)


def buffers_to_torch(module: torch.nn.Module, flat: dict[tuple, Any]) -> dict[int, Any]:
    """Flax-layout arrays by path -> torch-layout tensors by ``id`` of the parameter."""
    import torch

    from funcmod.convert import flax_to_torch, torch_to_flax

    flat = {k: v for k, v in flat.items() if isinstance(v, jax.Array | np.ndarray)}  # no MaskedNode
    current = traverse_util.flatten_dict(torch_to_flax(module)["params"])
    tree = traverse_util.unflatten_dict({k: flat.get(k, v) for k, v in current.items()})
    params = list(module.parameters())
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        try:
            flax_to_torch({"params": tree}, module, strict=False)
            out = {id(p): p.detach().clone() for p in params}
        finally:
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
    return out


def carried_init(
    tx: optax.GradientTransformation,
    optimizer: torch.optim.Optimizer,
    group: int,
    module: torch.nn.Module,
) -> optax.GradientTransformation:
    """``tx`` whose ``init`` returns the state torch holds for param group ``group`` (``tx``
    unchanged when torch holds none). The buffers are converted now, not at ``init``: torch
    keeps changing its own."""
    params = [p for p in optimizer.param_groups[group]["params"] if p in optimizer.state]
    if not params:
        return tx
    name = type(optimizer).__name__
    count = _count_of(optimizer.state[params[0]], name)
    first = optimizer.state[params[0]]
    keys = {k for p in params for k, v in optimizer.state[p].items() if hasattr(v, "shape")}
    carried = {
        key: buffers_to_flax(
            module,
            {
                id(p): optimizer.state[p][key]
                for p in params
                if optimizer.state[p].get(key) is not None
            },
        )
        for key in keys - {"step"} - _SCALARS
    }
    has = {
        key: {id(p) for p in params if optimizer.state[p].get(key) is not None} for key in carried
    }
    where = param_paths(module)
    scalars = {k: first[k].detach().cpu().numpy().copy() for k in _SCALARS if k in first}

    def init(flax_params: Any) -> TorchOptState:
        fresh = tx.init(flax_params)
        slots = {}
        for key, tree in fresh.slots.items():
            if key in _SCALARS:
                slots[key] = jnp.asarray(scalars[key], tree.dtype)
                continue

            def carry(path: Any, leaf: jax.Array, key: str = key) -> jax.Array:
                path = _name_path(path)
                p = where.get(path)
                if key not in carried or p is None or id(p) not in has[key]:
                    return leaf
                return jnp.asarray(carried[key][path], leaf.dtype)

            slots[key] = jax.tree_util.tree_map_with_path(carry, tree)
        return TorchOptState(jnp.asarray(count, jnp.int32), slots)

    return optax.GradientTransformation(init, tx.update)


def _states_by_group(opt_state: Any) -> dict[int, TorchOptState]:
    found = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(
        opt_state, is_leaf=lambda x: isinstance(x, TorchOptState)
    )
    for path, leaf in flat:
        if not isinstance(leaf, TorchOptState):
            continue
        group = 0
        for k in path:
            m = re.fullmatch(r"group(\d+)", str(getattr(k, "key", "")))
            if m:
                group = int(m.group(1))
        found[group] = leaf
    return found


def to_torch_state(
    opt_state: Any, optimizer: torch.optim.Optimizer, module: torch.nn.Module
) -> None:
    """Write ``opt_state`` (of ``from_torch(optimizer, module)``) into ``optimizer.state``, so
    that ``optimizer.step()`` continues the optax run exactly.

    Every group's state is checked and converted before anything is written.

    Raises:
      ValueError: no torch-exact state in ``opt_state``, or a trainable group's state missing.
    """
    import torch

    name = type(optimizer).__name__
    by_group = _states_by_group(opt_state)
    if not by_group:
        raise ValueError(
            "opt_state holds no funcmod.optim state (TorchOptState); expected the state of "
            "from_torch(optimizer, module)"
        )
    default = torch.get_default_dtype()
    scalar_dtype = torch.float64 if default == torch.float64 else torch.float32
    writes: list[tuple[Any, dict[str, Any]]] = []
    for i, group in enumerate(optimizer.param_groups):
        trainable = [p for p in group["params"] if p.requires_grad]
        if not trainable:
            continue
        if i not in by_group:
            raise ValueError(f"opt_state has no state for {name} param group {i}")
        st = by_group[i]
        count = int(st.count)
        converted = {
            key: buffers_to_torch(module, traverse_util.flatten_dict(tree))
            for key, tree in st.slots.items()
            if key not in _SCALARS
        }
        for p in trainable:
            new: dict[str, Any] = {}
            if name != "SGD":
                new["step"] = torch.tensor(float(count), dtype=scalar_dtype)
            for key, value in st.slots.items():
                if key in _SCALARS:
                    new[key] = torch.from_numpy(np.array(value))
                else:
                    new[key] = converted[key][id(p)]
            if name == "SGD" and count == 0:
                new["momentum_buffer"] = None
            writes.append((p, new))
    for p, new in writes:
        optimizer.state[p] = new
