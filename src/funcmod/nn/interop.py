"""Linen names <-> NNX state: one parameter tree for both Flax APIs.

Linen calls the first layer of ``self.layers = [...]`` ``layers_0``; NNX keeps the list and
the index, ``layers/0`` (an ``int`` key). ``linen_params`` and ``load_linen_params`` map between
the two, so the weights ``funcmod.convert.torch_to_flax`` makes for a Linen model load into its
NNX twin unchanged, and ``LinenView`` runs an NNX model through Linen's ``apply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

__all__ = ["LinenView", "linen_params", "load_linen_params"]


def _linen_path(nnx_path: tuple[Any, ...]) -> tuple[str, ...]:
    """``('layers', 0, 'kernel')`` -> ``('layers_0', 'kernel')``: an int key is a list index,
    which Linen appends to the list attribute's name."""
    out: list[str] = []
    for key in nnx_path:
        if isinstance(key, int) and out:
            out[-1] = f"{out[-1]}_{key}"
        else:
            out.append(str(key))
    return tuple(out)


def _param_leaves(
    model: nnx.Module | nnx.State,
) -> tuple[list[tuple[tuple[Any, ...], Any]], Any]:
    """The ``nnx.Param`` arrays of a model (or the arrays of a state, such as the gradients
    ``nnx.grad`` returns) with their NNX paths, and the state's tree structure."""
    state = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    # Every leaf path ends in GetAttrKey('value') (the array inside the Param); drop it.
    leaves = [(tuple(k.key for k in p if isinstance(k, jax.tree_util.DictKey)), v) for p, v in flat]
    return leaves, treedef


def linen_params(model: nnx.Module | nnx.State) -> dict[str, Any]:
    """The model's parameters as the Linen port names them: ``{'linear1': {'kernel': ...}}``.

    Also takes a state of the same structure, for example the gradient ``nnx.grad`` returns
    for the model. Wrap it as ``{'params': linen_params(model)}`` to get Linen variables.
    """
    leaves, _ = _param_leaves(model)
    return traverse_util.unflatten_dict({_linen_path(p): v for p, v in leaves})


def _nnx_state_from_linen(model: nnx.Module, params: Mapping[str, Any]) -> nnx.State:
    """A ``nnx.Param`` state for ``model`` holding the Linen-named ``params``, checked strictly."""
    leaves, treedef = _param_leaves(model)
    given = traverse_util.flatten_dict(dict(params))
    wanted = {_linen_path(p): v for p, v in leaves}
    missing = sorted("/".join(k) for k in wanted.keys() - given.keys())
    unexpected = sorted("/".join(k) for k in given.keys() - wanted.keys())
    mismatched = [
        f"{'/'.join(k)}: expected {np.shape(v)} {np.dtype(v.dtype).name}, "
        f"got {np.shape(given[k])} {np.dtype(given[k].dtype).name}"
        for k, v in wanted.items()
        if k in given
        and (np.shape(given[k]) != np.shape(v) or np.dtype(given[k].dtype) != np.dtype(v.dtype))
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"params do not fit {type(model).__name__}: missing {missing}, "
            f"unexpected {unexpected}, mismatched {mismatched}"
        )
    return jax.tree_util.tree_unflatten(treedef, [given[_linen_path(p)] for p, _ in leaves])


def load_linen_params(model: nnx.Module, params: Mapping[str, Any]) -> None:
    """Write Linen-named parameters (``variables['params']`` of the Linen port, or of
    ``torch_to_flax(twin)``) into the NNX model, in place.

    Raises:
      ValueError: naming every missing and unexpected key and every leaf whose shape or dtype
        does not fit; nothing is written then.
    """
    nnx.update(model, _nnx_state_from_linen(model, params))


class LinenView:
    """An NNX model seen through Linen's functional interface: ``view.apply(variables, *xs)``.

    ``variables['params']`` uses the Linen names. The model itself is not modified: each call
    merges a fresh copy from the model's graph definition and the given arrays, so ``jax.grad``
    with respect to ``variables`` works, and code written for a Linen port (for example
    ``funcmod.parity.check_parity``) runs the NNX model unchanged. State other than parameters
    (batch statistics, say) is taken as it was when the view was made.
    """

    def __init__(self, model: nnx.Module):
        self.model = model
        self._graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)

    def apply(self, variables: Mapping[str, Any], *args: Any) -> Any:
        params = _nnx_state_from_linen(self.model, variables.get("params", {}))
        return nnx.merge(self._graphdef, params, self._rest)(*args)
