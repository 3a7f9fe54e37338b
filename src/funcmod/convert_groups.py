"""Conversion rules that map several torch tensors to several Flax leaves, and the module-level
cases ``funcmod.convert``'s walk handles before and around its rules.

``GroupRule`` is the general rule: torch tensors ``torch_names`` of one layer become the Flax
leaves ``flax_names`` (``'/'`` nests them) through ``to_flax``, and back through ``to_torch``,
its exact inverse. The rules built here, by layer::

    RNN / LSTM / GRU     weight_{ih,hh}_l{k}[_reverse] (G*H, in|H) -> kernel_{ih,hh}_l{k}[...]
                         (in|H, G*H); bias_{ih,hh}_l{k}[...] copied, kept apart
    MultiheadAttention   in_proj_weight (3E, E) -> {q,k,v}_proj/kernel (E, E) (rows split,
                         transposed); q/k/v_proj_weight (E, d) -> {q,k,v}_proj/kernel (d, E);
                         in_proj_bias (3E,) -> {q,k,v}_proj/bias (E,)
    weight_norm          parametrizations.<w>.original0 (g), original1 (v) -> g, v, both in
                         the layout of the wrapped layer's ``<w>`` (Linear: v (in, out), g
                         (1, out); ConvNd: v (*k, in, out), g (1, ..., 1, out))

Splitting, concatenating and transposing are exact, so every rule is lossless both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np

__all__ = [
    "ConversionError",
    "GroupRule",
    "LayerRule",
    "LeafRule",
    "mha_groups",
    "rnn_groups",
    "strip_prefix",
    "unwrap",
]

Path = tuple[str, ...]


def _path_str(path: Path) -> str:
    return "/".join(path)


class ConversionError(ValueError):
    """Weights that do not fit: lists every missing key, unexpected key and mismatched leaf.

    Attributes:
      missing: keys the target expects that the source does not have.
      unexpected: keys the source has that the target does not expect.
      mismatched: ``(key, expected, got)`` triples, where expected and got describe the shape
        and dtype on each side.
    """

    def __init__(
        self,
        context: str,
        *,
        missing: list[str] | tuple[str, ...] = (),
        unexpected: list[str] | tuple[str, ...] = (),
        mismatched: list[tuple[str, str, str]] | tuple[tuple[str, str, str], ...] = (),
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = [context]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  mismatched leaves ({len(self.mismatched)}):")
            lines += [f"    {k}: expected {e}, got {g}" for k, e, g in self.mismatched]
        super().__init__("\n".join(lines))


# --- layout transforms --------------------------------------------------------------------------


@dataclass(frozen=True)
class LeafRule:
    """How one tensor of a torch layer maps to one Flax leaf.

    Attributes:
      torch_name: the tensor's attribute name on the torch layer (``'weight'``).
      flax_name: the leaf's name in the Flax module (``'kernel'``).
      collection: the Flax variable collection (``'params'``, ``'batch_stats'``).
      perm: axes permutation applied to the torch array to get the Flax array, or None.
        The inverse permutation is applied on the way back.
      counter: the tensor is an integer step count (BatchNorm's int64 ``num_batches_tracked``):
        its Flax leaf has JAX's default integer type, int32 without 64-bit JAX (what the Flax
        layer's own counter has), and turns int64 again on the way back. Both casts are exact;
        a count that does not fit int32 is a ``ConversionError``.
    """

    torch_name: str
    flax_name: str
    collection: str = "params"
    perm: Callable[[int], tuple[int, ...]] | tuple[int, ...] | None = None
    counter: bool = False

    def flax_dtype(self, torch_dtype: np.dtype) -> np.dtype:
        """The Flax leaf's dtype for a torch tensor of ``torch_dtype``."""
        if self.counter:
            return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))
        return np.dtype(torch_dtype)

    def _perm_for(self, ndim: int) -> tuple[int, ...] | None:
        perm = self.perm(ndim) if callable(self.perm) else self.perm
        if perm is not None and len(perm) != ndim:
            raise ValueError(
                f"rule for {self.torch_name!r}: permutation {perm} does not fit a {ndim}-d array"
            )
        return perm

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        if self.counter:
            count = array.astype(self.flax_dtype(array.dtype))
            if not np.array_equal(count.astype(array.dtype), array):
                raise ConversionError(
                    f"{self.torch_name} = {array} does not fit {count.dtype.name}; convert "
                    f"inside `with jax.enable_x64(True):`"
                )
            return count
        perm = self._perm_for(array.ndim)
        return array if perm is None else np.transpose(array, perm)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        if self.counter:
            return array.astype(np.int64)
        perm = self._perm_for(array.ndim)
        return array if perm is None else np.transpose(array, np.argsort(perm))

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        perm = self._perm_for(len(torch_shape))
        return torch_shape if perm is None else tuple(torch_shape[i] for i in perm)


@dataclass(frozen=True)
class LayerRule:
    """The rule for one torch layer type: its one-tensor leaves, its several-tensor groups
    (``GroupRule``), and tensors deliberately not converted."""

    leaves: tuple[LeafRule, ...]
    ignored: frozenset[str] = field(default_factory=frozenset)
    groups: tuple[GroupRule, ...] = ()


@dataclass(frozen=True)
class GroupRule:
    """Several tensors of one torch layer <-> several Flax leaves.

    Attributes:
      torch_names: the tensors' attribute names on the layer (``('in_proj_weight',)``).
      flax_names: the leaves' paths below the layer, ``'/'``-separated (``'q_proj/kernel'``).
      to_flax: takes the torch arrays in ``torch_names`` order, returns the Flax arrays in
        ``flax_names`` order.
      to_torch: the exact inverse of ``to_flax``.
      collection: the Flax variable collection of every leaf.
    """

    torch_names: tuple[str, ...]
    flax_names: tuple[str, ...]
    to_flax: Callable[..., tuple[np.ndarray, ...]]
    to_torch: Callable[..., tuple[np.ndarray, ...]]
    collection: str = "params"

    def flax_shapes(self, torch_shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
        # zero-stride stand-ins: the layout functions only reshape, split and transpose
        fake = [np.broadcast_to(np.zeros((), np.float32), s) for s in torch_shapes]
        return tuple(np.shape(a) for a in self.to_flax(*fake))


def transposed(torch_name: str, flax_name: str) -> GroupRule:
    """A 2-d weight (out, in) as a kernel (in, out)."""
    return GroupRule(
        (torch_name,), (flax_name,), lambda w: (np.transpose(w),), lambda k: (np.transpose(k),)
    )


def copied(torch_name: str, flax_name: str) -> GroupRule:
    return GroupRule((torch_name,), (flax_name,), lambda a: (a,), lambda a: (a,))


def rnn_groups(module) -> tuple[GroupRule, ...]:
    """Rules for every layer and direction of a torch ``RNN``/``LSTM``/``GRU``."""
    if getattr(module, "proj_size", 0):
        raise ValueError(f"{type(module).__name__} with proj_size > 0 has no Flax counterpart")
    rules = []
    for name in module._flat_weights_names:
        if name.startswith("weight_"):
            rules.append(transposed(name, "kernel_" + name[len("weight_") :]))
        else:
            rules.append(copied(name, name))
    return tuple(rules)


def _split3(w):
    return tuple(np.split(w, 3, axis=0))


def mha_groups(module) -> tuple[GroupRule, ...]:
    """Rules for a torch ``MultiheadAttention``; ``out_proj`` converts as the Linear it is."""
    rules = []
    if module.in_proj_weight is not None:  # packed: rows [q; k; v] of (3E, E)
        rules.append(
            GroupRule(
                ("in_proj_weight",),
                ("q_proj/kernel", "k_proj/kernel", "v_proj/kernel"),
                lambda w: tuple(np.transpose(p) for p in _split3(w)),  # 3 x (E, E) -> (in, out)
                lambda q, k, v: (np.concatenate([q.T, k.T, v.T], axis=0),),
            )
        )
    else:
        rules += [transposed(f"{n}_proj_weight", f"{n}_proj/kernel") for n in "qkv"]
    if module.in_proj_bias is not None:
        rules.append(
            GroupRule(
                ("in_proj_bias",),
                ("q_proj/bias", "k_proj/bias", "v_proj/bias"),
                _split3,
                lambda q, k, v: (np.concatenate([q, k, v]),),
            )
        )
    return tuple(rules)


def strip_prefix(keys: list[str]) -> str | None:
    """The wrapper prefix (``'module.'`` from DistributedDataParallel, ``'_orig_mod.'`` from
    ``torch.compile``) that every key of a state dict starts with, or None."""
    for prefix in ("module.", "_orig_mod."):
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return None


def unwrap(module):
    """The module a ``torch.compile`` / DistributedDataParallel / DataParallel wrapper holds."""
    while True:
        inner = module._modules.get("_orig_mod") or module._modules.get("module")
        if inner is None or type(module).__name__ not in (
            "OptimizedModule",
            "DistributedDataParallel",
            "DataParallel",
        ):
            return module
        module = inner
