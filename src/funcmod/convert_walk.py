"""The walk behind ``funcmod.convert``: which torch tensor becomes which Flax leaf, and the
array conversions both directions share.

The walk visits a module's own tensors (through its rule in ``funcmod.convert.RULES``, or copied
as they are), then its children, naming them as Flax names submodules:

* a child attribute keeps its name;
* an ``nn.Sequential``'s children are ``layers_0, layers_1, ...`` by position (the names a
  ``flax.linen.Sequential`` gives its list, whatever names an ``OrderedDict`` gave them);
* an ``nn.ModuleList``/``nn.ModuleDict`` attribute ``blocks`` is no module of its own: its
  elements are ``blocks_0, ...`` / ``blocks_<key>``, and a container in a container
  ``blocks_0_1``, as Flax names the elements of (nested) list and dict attributes;
* ``parametrizations.weight_norm`` becomes leaves ``g`` and ``v`` (``funcmod.convert_groups``);
* a tensor reachable under several names (tied weights) is visited once, under the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from torch import nn

from funcmod.convert_groups import ConversionError, GroupRule, LeafRule, Path, _path_str

__all__: list[str] = []  # private helpers of funcmod.convert


@dataclass(frozen=True)
class _Entry:
    """Torch tensors (one for a ``LeafRule``, several for a ``GroupRule``) and their leaves."""

    flax_paths: tuple[Path, ...]  # (collection, *module path, leaf name) each
    torch_keys: tuple[str, ...]  # the state_dict keys
    tensors: tuple[torch.Tensor, ...]
    rule: LeafRule | GroupRule

    def _single(self, values: tuple) -> Any:
        if len(values) != 1 or not isinstance(self.rule, LeafRule):
            raise TypeError(f"{self.torch_keys} convert together (a GroupRule), not one by one")
        return values[0]

    flax_path = property(lambda self: self._single(self.flax_paths))
    torch_key = property(lambda self: self._single(self.torch_keys))
    tensor = property(lambda self: self._single(self.tensors))

    def to_flax(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if isinstance(self.rule, LeafRule):
            return (self.rule.to_flax(arrays[0]),)
        return tuple(self.rule.to_flax(*arrays))

    def to_torch(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if isinstance(self.rule, LeafRule):
            return (self.rule.to_torch(arrays[0]),)
        return tuple(self.rule.to_torch(*arrays))

    def flax_dtypes(self) -> tuple[np.dtype, ...]:
        dtypes = [_torch_dtype_to_numpy(t.dtype) for t in self.tensors]
        if isinstance(self.rule, LeafRule):
            return (self.rule.flax_dtype(dtypes[0]),)
        return (dtypes[0],) * len(self.flax_paths)

    def flax_shapes(self) -> tuple[tuple[int, ...], ...]:
        shapes = [tuple(t.shape) for t in self.tensors]
        if isinstance(self.rule, LeafRule):
            return (self.rule.flax_shape(shapes[0]),)
        return self.rule.flax_shapes(shapes)


def _single_entry(path: Path, key: str, tensor: torch.Tensor, rule: LeafRule) -> _Entry:
    return _Entry((path,), (key,), (tensor,), rule)


def _walk_all(module: nn.Module, rule_for: Callable) -> tuple[list[_Entry], dict[str, Any]]:
    """The entries of ``module``'s tensors, and the entries of tied aliases by torch key.

    A tensor reachable under several names (``lm_head.weight is wte.weight``) is one entry,
    under the first name in module order; each later name is an alias of it.
    """
    walked: list[_Entry] = []
    _walk(module, rule_for, (), "", walked)
    entries, aliases, first = [], {}, {}
    for e in walked:
        ids = [id(t) for t in e.tensors]
        if len(ids) == 1 and ids[0] in first:
            aliases[e.torch_keys[0]] = (e, first[ids[0]])
            continue
        for i, k in zip(ids, e.torch_keys, strict=True):
            first.setdefault(i, k)
        entries.append(e)
    seen: dict[Path, str] = {}
    for e in entries:
        key = ", ".join(e.torch_keys)
        for path in e.flax_paths:
            if path in seen:
                raise ConversionError(
                    f"two torch tensors map to the same Flax key {_path_str(path)}: "
                    f"{seen[path]!r} and {key!r}; rename one of them"
                )
            seen[path] = key
    for path, key in seen.items():  # a leaf where another tensor needs a subtree
        for n in range(2, len(path)):
            if path[:n] in seen:
                raise ConversionError(
                    f"Flax key {_path_str(path[:n])} (torch {seen[path[:n]]!r}) is a leaf, but "
                    f"{_path_str(path)} (torch {key!r}) needs it to be a subtree; rename one"
                )
    return entries, aliases


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, str]]:
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p, "params"
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b, "buffers"


def _weight_norms(module, rule, flax_prefix: Path, torch_prefix: str, out) -> set[str]:
    """``parametrizations.weight_norm`` tensors as leaves ``g`` and ``v`` in the layout of the
    wrapped tensor's own rule; returns the names of the parametrized tensors handled."""
    plists = module._modules.get("parametrizations")
    handled: set[str] = set()
    if not isinstance(plists, nn.ModuleDict):
        return handled
    for tname, plist in plists.items():
        if len(plist) != 1 or type(plist[0]).__name__ != "_WeightNorm":
            continue  # any other parametrization: walked as plain tensors
        leaf = next((lf for lf in (rule.leaves if rule else ()) if lf.torch_name == tname), None)
        for orig, short in (("original0", "g"), ("original1", "v")):
            key = f"{torch_prefix}parametrizations.{tname}.{orig}"
            lrule = LeafRule(key, short, perm=leaf.perm if leaf else None)
            out.append(
                _single_entry(("params", *flax_prefix, short), key, plist._parameters[orig], lrule)
            )
        handled.add(tname)
    return handled


def _walk(module: nn.Module, rule_for, flax_prefix: Path, torch_prefix: str, out) -> None:
    rule = rule_for(module)  # funcmod.convert's RULES lookup
    own = {name: (t, coll) for name, t, coll in _own_tensors(module)}
    if rule is not None:
        for leaf in rule.leaves:
            if leaf.torch_name in own:
                t, _ = own.pop(leaf.torch_name)
                path = (leaf.collection, *flax_prefix, leaf.flax_name)
                out.append(_single_entry(path, torch_prefix + leaf.torch_name, t, leaf))
        for group in rule.groups:
            if all(n in own for n in group.torch_names):
                out.append(
                    _Entry(
                        tuple(
                            (group.collection, *flax_prefix, *f.split("/"))
                            for f in group.flax_names
                        ),
                        tuple(torch_prefix + n for n in group.torch_names),
                        tuple(own.pop(n)[0] for n in group.torch_names),
                        group,
                    )
                )
        for name in rule.ignored:
            own.pop(name, None)
    for name, (t, coll) in own.items():  # registered directly: copied as they are
        out.append(
            _single_entry((coll, *flax_prefix, name), torch_prefix + name, t, LeafRule(name, name))
        )
    handled = _weight_norms(module, rule, flax_prefix, torch_prefix, out)
    for pos, (name, child) in enumerate(module._modules.items()):
        if child is None:
            continue
        # A Flax nn.Sequential names its elements by position: layers_0, layers_1, ...
        flax_name = f"layers_{pos}" if isinstance(module, nn.Sequential) else name
        skip = handled if name == "parametrizations" else set()
        _walk_child(child, rule_for, flax_prefix, flax_name, f"{torch_prefix}{name}.", out, skip)


def _walk_child(
    child, rule_for, flax_prefix: Path, flax_name: str, torch_prefix: str, out, skip=()
):
    if isinstance(child, nn.ModuleList | nn.ModuleDict):
        # Flax names the elements of a list/dict attribute `blocks` blocks_0 / blocks_a, and
        # those of a nested container blocks_0_1: the container is not a module of its own.
        for key, grandchild in child._modules.items():
            if grandchild is not None and key not in skip:
                _walk_child(
                    grandchild,
                    rule_for,
                    flax_prefix,
                    f"{flax_name}_{key}",
                    f"{torch_prefix}{key}.",
                    out,
                )
    else:
        _walk(child, rule_for, (*flax_prefix, flax_name), torch_prefix, out)


# --- array conversion ---------------------------------------------------------------------------


def _tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _numpy_to_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.array(a, order="C", copy=True)  # writable and contiguous (jax's buffers are read-only)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _to_jax(a: np.ndarray, key: str) -> jax.Array:
    if a.dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ConversionError(
            f"{key} is {a.dtype}, but JAX is running without 64-bit types and would silently "
            f"cast it to 32 bits; convert inside `with jax.enable_x64(True):` or set "
            f"jax.config.update('jax_enable_x64', True)"
        )
    return jnp.asarray(a)


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
    return f"shape {tuple(shape)} {np.dtype(dtype).name}"


def _refuse_unmaterialised(module: nn.Module, entries: list[_Entry], *, meta_ok: bool) -> None:
    """Raise naming every tensor that holds no values: lazy (uninitialised) or on 'meta'."""
    lazy = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)
    bad = [
        f"{k} ({'uninitialised lazy' if isinstance(t, lazy) else 'meta device'})"
        for e in entries
        for k, t in zip(e.torch_keys, e.tensors, strict=True)
        if isinstance(t, lazy) or (t.is_meta and not meta_ok)
    ]
    if bad:
        raise ConversionError(
            f"{type(module).__name__} has {len(bad)} tensors without values: "
            + ", ".join(bad)
            + "; run a forward pass (lazy modules) or materialise them "
            "(module.to_empty(device='cpu') and load values) first"
        )


def _torch_dtype_to_numpy(dtype: torch.dtype) -> np.dtype:
    if dtype == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    return torch.empty((), dtype=dtype).numpy().dtype
