"""Where a tensor the graph reads lives in the ported module: a Flax parameter, a buffer, or a
constant written into the source.

* A parameter or persistent buffer is a leaf of the variables ``funcmod.convert.torch_to_flax``
  gives: under its owning module's path, named and laid out by the owner's conversion rule
  (``Linear.weight`` -> ``kernel`` transposed; a tensor registered directly on a module keeps
  its name and layout; ``weight_norm``'s ``original0/1`` -> ``g``/``v``). A tied tensor is read
  from the one leaf that holds it (``funcmod.convert.tied_parameters``).
* A non-persistent buffer or a lifted constant (position ids, rotary ``inv_freq``) is never a
  parameter: the source recomputes it (``jnp.arange``, ``jnp.tril(jnp.ones(...))``, a constant
  fill) or writes its values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from funcmod.convert import RULES, LayerRule

__all__ = ["MAX_LITERAL", "TensorRef", "constant_source", "resolve"]

MAX_LITERAL = 4096  # the most elements a constant may have to be written out in the source
_WEIGHT_NORM = re.compile(r"^(.*?)\.?parametrizations\.(\w+)\.original([01])$")


@dataclass(frozen=True)
class TensorRef:
    """A graph tensor's home.

    Attributes:
      kind: ``'variable'`` (a leaf of the variables) or ``'constant'``.
      owner: the owning module's path ('' for the root).
      collection, leaf: the Flax collection and leaf name (for variables).
      perm: the permutation from torch's layout to the leaf's, or None.
      shape: the leaf's shape; value: a constant's tensor.
    """

    kind: str
    owner: str = ""
    collection: str = "params"
    leaf: str = ""
    perm: tuple[int, ...] | None = None
    shape: tuple[int, ...] = ()
    value: Any = None


def _rule_for(module: nn.Module) -> LayerRule | None:
    for cls in type(module).__mro__:
        if cls in RULES:
            rule = RULES[cls]
            return rule if isinstance(rule, LayerRule) else rule(module)
    return None


def _perm(leaf_rule: Any, ndim: int) -> tuple[int, ...] | None:
    perm = leaf_rule.perm
    perm = perm(ndim) if callable(perm) else perm
    return tuple(perm) if perm is not None else None


def _flax_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    return shape if perm is None else tuple(shape[i] for i in perm)


def resolve(
    model: nn.Module, kind: str, target: str, tied: dict[str, str], value: Any
) -> TensorRef:
    """The home of the graph input ``target`` of ``kind`` (``PARAMETER``, ``BUFFER``,
    ``CONSTANT_TENSOR``); ``value`` is the tensor. Raises ``NotImplementedError`` for a tensor
    that converts only together with others (a recurrent layer's, read outside the layer)."""
    if kind == "CONSTANT_TENSOR" or (kind == "BUFFER" and not _persistent(model, target)):
        return TensorRef("constant", value=value)
    key = tied.get(target, target)
    shape = tuple(value.shape)
    m = _WEIGHT_NORM.match(key)
    if m:
        owner, tname, which = m.group(1), m.group(2), m.group(3)
        rule = _rule_for(model.get_submodule(owner))
        leaf = next((lf for lf in (rule.leaves if rule else ()) if lf.torch_name == tname), None)
        perm = _perm(leaf, len(shape)) if leaf is not None else None
        name = "g" if which == "0" else "v"
        return TensorRef("variable", owner, "params", name, perm, _flax_shape(shape, perm))
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    rule = _rule_for(module)
    collection = "params" if kind == "PARAMETER" else "buffers"
    if rule is not None:
        for leaf in rule.leaves:
            if leaf.torch_name == name:
                perm = _perm(leaf, len(shape))
                return TensorRef(
                    "variable",
                    owner,
                    leaf.collection,
                    leaf.flax_name,
                    perm,
                    _flax_shape(shape, perm),
                )
        if any(name in g.torch_names for g in rule.groups):
            raise NotImplementedError(
                f"{key} converts together with other tensors of {type(module).__name__} and "
                "cannot be read outside that layer"
            )
    return TensorRef("variable", owner, collection, name, None, shape)


def _persistent(model: nn.Module, target: str) -> bool:
    owner, _, name = target.rpartition(".")
    return name not in model.get_submodule(owner)._non_persistent_buffers_set


def constant_source(value: torch.Tensor, dtype_source: str) -> str | None:
    """Source that recomputes ``value``: a fill, an ``arange`` (possibly broadcast), a causal
    ``tril``/``triu`` of ones, or its values written out (up to ``MAX_LITERAL`` elements);
    None when it is too large for any of those."""
    t = value.detach().cpu()
    shape = tuple(t.shape)
    dt = f"dtype={dtype_source}"
    if t.numel() == 0:
        return f"jnp.zeros({shape}, {dt})"
    flat = t.reshape(-1)
    if t.dtype != torch.bool and bool((flat == flat[0]).all()):
        return f"jnp.full({shape}, {_scalar(flat[0])}, {dt})"
    if t.dtype == torch.bool and bool((flat == flat[0]).all()):
        return f"jnp.full({shape}, {bool(flat[0])}, {dt})"
    if t.ndim >= 1 and not t.is_floating_point() and t.dtype != torch.bool:
        n = shape[-1]
        ar = torch.arange(n, dtype=t.dtype)
        if bool((t == ar).all()):
            inner = f"jnp.arange({n}, {dt})"
            return inner if t.ndim == 1 else f"jnp.broadcast_to({inner}, {shape})"
    if t.ndim == 2:
        ones = torch.ones(shape, dtype=t.dtype)
        for fn in ("tril", "triu"):
            if torch.equal(t, getattr(torch, fn)(ones)):
                return f"jnp.{fn}(jnp.ones({shape}, {dt}))"
    if t.numel() <= MAX_LITERAL:
        values = t.to(torch.float64 if t.is_floating_point() else t.dtype).numpy().tolist()
        return f"jnp.asarray({_literal(values)}, {dt})"
    return None


def _scalar(v: torch.Tensor) -> str:
    x = v.item()
    if isinstance(x, float):
        if np.isinf(x):
            return "jnp.inf" if x > 0 else "-jnp.inf"
        return repr(x)
    return repr(x)


def _literal(values: Any) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_literal(v) for v in values) + "]"
    if isinstance(values, float) and np.isinf(values):
        return "jnp.inf" if values > 0 else "-jnp.inf"
    return repr(values)
