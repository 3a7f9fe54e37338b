"""Weights both ways between a PyTorch module and Flax variables.

``torch_to_flax(module)`` walks the module tree and returns Flax variables::

    {'params': {'linear1': {'kernel': ..., 'bias': ...}, ...}, 'batch_stats': {...}}

``flax_to_torch(variables, module)`` loads them back into the module, in place.

The walk is driven by a table of rules keyed by the torch layer type (``RULES``). A rule lists,
for each tensor the layer owns, its Flax name, its collection and the layout change::

    Linear        weight (out, in)        -> params/kernel (in, out)
    Conv1d/2d/3d  weight (out, in, *k)    -> params/kernel (*k, in, out)
    BatchNorm     weight, bias            -> params/scale, params/bias
                  running_mean/var        -> batch_stats/mean, batch_stats/var
    LayerNorm     weight, bias            -> params/scale, params/bias
    Embedding     weight (num, dim)       -> params/embedding (num, dim)

Tensors registered directly on a module that has no rule (``nn.Parameter`` attributes,
``register_parameter``) are copied as they are, under their own name; persistent buffers go to
the ``buffers`` collection. Children keep their attribute names, except that an
``nn.Sequential``'s numbered children ``0, 1, ...`` become ``layers_0, layers_1, ...`` and an
``nn.ModuleList``/``nn.ModuleDict`` attribute ``blocks`` flattens to ``blocks_0, blocks_1, ...``,
the names Flax gives to the elements of a list or dict attribute. Register rules for your own
layer types with ``register_rule``.

Both directions are strict by default, like ``load_state_dict``: every missing key, unexpected key
and shape or dtype that does not fit is collected and raised as one ``ConversionError``, and
nothing is written when it is raised. torch -> flax -> torch is bitwise lossless (conversion only
transposes; it never casts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from flax import traverse_util
from torch import nn

__all__ = [
    "RULES",
    "ConversionError",
    "LayerRule",
    "LeafRule",
    "LoadResult",
    "check_against_template",
    "flax_to_torch",
    "register_rule",
    "torch_grads_to_flax",
    "torch_to_flax",
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
    """

    torch_name: str
    flax_name: str
    collection: str = "params"
    perm: Callable[[int], tuple[int, ...]] | tuple[int, ...] | None = None

    def _perm_for(self, ndim: int) -> tuple[int, ...] | None:
        perm = self.perm(ndim) if callable(self.perm) else self.perm
        if perm is not None and len(perm) != ndim:
            raise ValueError(
                f"rule for {self.torch_name!r}: permutation {perm} does not fit a {ndim}-d array"
            )
        return perm

    def to_flax(self, array: np.ndarray) -> np.ndarray:
        perm = self._perm_for(array.ndim)
        return array if perm is None else np.transpose(array, perm)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        perm = self._perm_for(array.ndim)
        return array if perm is None else np.transpose(array, np.argsort(perm))

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        perm = self._perm_for(len(torch_shape))
        return torch_shape if perm is None else tuple(torch_shape[i] for i in perm)


@dataclass(frozen=True)
class LayerRule:
    """The rule for one torch layer type: its leaves, and tensors deliberately not converted."""

    leaves: tuple[LeafRule, ...]
    ignored: frozenset[str] = field(default_factory=frozenset)


def _channels_last_kernel(ndim: int) -> tuple[int, ...]:
    # [outC, inC, *k] -> [*k, inC, outC]
    return (*range(2, ndim), 1, 0)


_LINEAR = LayerRule((LeafRule("weight", "kernel", perm=(1, 0)), LeafRule("bias", "bias")))
_CONV = LayerRule(
    (LeafRule("weight", "kernel", perm=_channels_last_kernel), LeafRule("bias", "bias"))
)
_NORM = LayerRule((LeafRule("weight", "scale"), LeafRule("bias", "bias")))
# PyTorch's running_var is the unbiased batch variance; Flax's is the biased one. They are copied
# as they are (eval-time outputs agree); train-time running statistics differ by n/(n-1).
_BATCHNORM = LayerRule(
    (
        LeafRule("weight", "scale"),
        LeafRule("bias", "bias"),
        LeafRule("running_mean", "mean", "batch_stats"),
        LeafRule("running_var", "var", "batch_stats"),
    ),
    ignored=frozenset({"num_batches_tracked"}),
)

RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: _LINEAR,
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Conv3d: _CONV,
    nn.BatchNorm1d: _BATCHNORM,
    nn.BatchNorm2d: _BATCHNORM,
    nn.BatchNorm3d: _BATCHNORM,
    nn.LayerNorm: _NORM,
    nn.GroupNorm: _NORM,
    nn.Embedding: LayerRule((LeafRule("weight", "embedding"),)),
}


def register_rule(
    torch_type: type[nn.Module], *leaves: LeafRule, ignored: tuple[str, ...] = ()
) -> None:
    """Teach the converter a torch layer type, for example your own layer::

        register_rule(MyDense, LeafRule("w", "kernel", perm=(1, 0)), LeafRule("b", "bias"))

    Tensors of the layer that no leaf names (and that are not in ``ignored``) are still copied
    as they are, so a rule only needs the leaves that are renamed or transposed.
    """
    if not (isinstance(torch_type, type) and issubclass(torch_type, nn.Module)):
        raise TypeError(f"register_rule expects an nn.Module subclass, got {torch_type!r}")
    RULES[torch_type] = LayerRule(tuple(leaves), frozenset(ignored))


def _rule_for(module: nn.Module) -> LayerRule | None:
    for cls in type(module).__mro__:  # the most specific registered type wins
        if cls in RULES:
            return RULES[cls]
    return None


# --- walking the torch module tree --------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    flax_path: Path  # (collection, *module path, leaf name)
    torch_key: str  # the state_dict key
    tensor: torch.Tensor
    rule: LeafRule


def _entries(module: nn.Module) -> list[_Entry]:
    """Every tensor of ``module`` that has a Flax counterpart, with its Flax path."""
    entries: list[_Entry] = []
    _walk(module, (), "", entries)
    seen: dict[Path, str] = {}
    for e in entries:
        if e.flax_path in seen:
            raise ConversionError(
                f"two torch tensors map to the same Flax key {_path_str(e.flax_path)}: "
                f"{seen[e.flax_path]!r} and {e.torch_key!r}; rename one of them"
            )
        seen[e.flax_path] = e.torch_key
    for path, key in seen.items():  # a leaf where another tensor needs a subtree
        for n in range(2, len(path)):
            if path[:n] in seen:
                raise ConversionError(
                    f"Flax key {_path_str(path[:n])} (torch {seen[path[:n]]!r}) is a leaf, but "
                    f"{_path_str(path)} (torch {key!r}) needs it to be a subtree; rename one"
                )
    return entries


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, str]]:
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p, "params"
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b, "buffers"


def _walk(module: nn.Module, flax_prefix: Path, torch_prefix: str, out: list[_Entry]) -> None:
    rule = _rule_for(module)
    own = {name: (t, coll) for name, t, coll in _own_tensors(module)}
    if rule is not None:
        for leaf in rule.leaves:
            if leaf.torch_name in own:
                t, _ = own.pop(leaf.torch_name)
                out.append(
                    _Entry(
                        (leaf.collection, *flax_prefix, leaf.flax_name),
                        torch_prefix + leaf.torch_name,
                        t,
                        leaf,
                    )
                )
        for name in rule.ignored:
            own.pop(name, None)
    for name, (t, coll) in own.items():  # registered directly: copied as they are
        out.append(_Entry((coll, *flax_prefix, name), torch_prefix + name, t, LeafRule(name, name)))
    for name, child in module._modules.items():
        if child is None:
            continue
        # Sequential's children '0', '1', ... are Flax's layers_0, layers_1, ...
        flax_name = f"layers_{name}" if isinstance(module, nn.Sequential) else name
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            # A list/dict attribute `blocks` in Flax's setup names its elements blocks_0, ...
            for key, grandchild in child._modules.items():
                if grandchild is not None:
                    _walk(
                        grandchild,
                        (*flax_prefix, f"{flax_name}_{key}"),
                        f"{torch_prefix}{name}.{key}.",
                        out,
                    )
        else:
            _walk(child, (*flax_prefix, flax_name), f"{torch_prefix}{name}.", out)


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


def _torch_dtype_to_numpy(dtype: torch.dtype) -> np.dtype:
    if dtype == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    return torch.empty((), dtype=dtype).numpy().dtype


# --- public API ---------------------------------------------------------------------------------


def torch_to_flax(
    module: nn.Module,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    template: Any = None,
) -> dict[str, Any]:
    """Flax variables holding the weights of a torch module.

    Args:
      module: the torch module; its layer types and attribute names decide the Flax names.
      state_dict: take the tensors from this state dict instead of the module (for example a
        checkpoint you have not loaded into the module). Checked strictly against the module's
        own keys and shapes.
      template: optional Flax variables or their shapes, e.g.
        ``jax.eval_shape(model.init, key, x)``; the result is checked against it leaf by leaf.

    Returns:
      ``{'params': {...}}``, plus ``'batch_stats'`` for BatchNorm statistics and ``'buffers'``
      for other persistent buffers, as nested dicts of ``jax.Array``.

    Raises:
      ConversionError: a state dict or template that does not fit, listing every offending key
        with both shapes; a float64 tensor while ``jax_enable_x64`` is off.
    """
    entries = _entries(module)
    if state_dict is not None:
        tensors = _check_state_dict(module, entries, state_dict)
    else:
        tensors = {e.torch_key: e.tensor for e in entries}
    flat = {
        e.flax_path: _to_jax(
            e.rule.to_flax(_tensor_to_numpy(tensors[e.torch_key])), _path_str(e.flax_path)
        )
        for e in entries
    }
    variables = traverse_util.unflatten_dict(flat)
    if template is not None:
        check_against_template(variables, template)
    return variables


def torch_grads_to_flax(module: nn.Module) -> dict[str, Any]:
    """The ``.grad`` of every parameter of ``module``, in Flax's layout and names.

    Returns ``{'params': {...}}`` as numpy arrays (copies); a parameter with no gradient yet
    gives zeros, which is what ``jax.grad`` returns for a parameter that does not affect the loss.
    """
    flat = {}
    for e in _entries(module):
        if e.flax_path[0] != "params":
            continue
        g = e.tensor.grad
        g = torch.zeros_like(e.tensor) if g is None else g
        # A copy: the numpy view would change under a later in-place op on .grad.
        flat[e.flax_path] = np.array(e.rule.to_flax(_tensor_to_numpy(g)))
    return traverse_util.unflatten_dict(flat)


def _check_state_dict(
    module: nn.Module, entries: list[_Entry], state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    ignored = set(module.state_dict().keys()) - {e.torch_key for e in entries}
    expected = {e.torch_key: e.tensor for e in entries}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in ignored]
    mismatched = [
        (
            k,
            _describe(expected[k].shape, _torch_dtype_to_numpy(expected[k].dtype)),
            _describe(state_dict[k].shape, _torch_dtype_to_numpy(state_dict[k].dtype)),
        )
        for k in expected
        if k in state_dict
        and (state_dict[k].shape != expected[k].shape or state_dict[k].dtype != expected[k].dtype)
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            f"state_dict does not fit {type(module).__name__}",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    return dict(state_dict)


def check_against_template(variables: Any, template: Any) -> None:
    """Raise ``ConversionError`` unless ``variables`` has exactly the keys, shapes and dtypes of
    ``template`` (Flax variables, or ``jax.ShapeDtypeStruct`` leaves from ``jax.eval_shape``)."""
    got = traverse_util.flatten_dict(variables)
    want = traverse_util.flatten_dict(template)
    missing = [_path_str(k) for k in want if k not in got]
    unexpected = [_path_str(k) for k in got if k not in want]
    mismatched = [
        (
            _path_str(k),
            _describe(np.shape(want[k]), want[k].dtype),
            _describe(np.shape(got[k]), got[k].dtype),
        )
        for k in want
        if k in got
        and (np.shape(want[k]) != np.shape(got[k]) or np.dtype(want[k].dtype) != got[k].dtype)
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            "converted variables do not match the Flax template",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )


class LoadResult(NamedTuple):
    """What ``flax_to_torch(..., strict=False)`` skipped, like ``load_state_dict``'s result."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def flax_to_torch(variables: Mapping[str, Any], module: nn.Module, *, strict: bool = True):
    """Load Flax variables into a torch module, in place.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` as returned by ``model.init`` or
        ``torch_to_flax``. Leaves may be jax or numpy arrays.
      module: the torch module to write into; its layer types decide the layout changes.
      strict: when True (the default), a missing or unexpected key is an error. A shape or
        dtype that does not fit is always an error.

    Returns:
      ``LoadResult(missing_keys, unexpected_keys)``, in Flax paths ('params/linear1/kernel').

    Raises:
      ConversionError: listing every offending key with both shapes and dtypes. The module is
        left exactly as it was.
    """
    entries = _entries(module)
    flat = traverse_util.flatten_dict(dict(variables))
    expected = {e.flax_path: e for e in entries}
    missing = [_path_str(k) for k in expected if k not in flat]
    unexpected = [_path_str(k) for k in flat if k not in expected]
    updates: list[tuple[torch.Tensor, torch.Tensor]] = []
    mismatched = []
    for path, e in expected.items():
        if path not in flat:
            continue
        array = np.asarray(flat[path])
        want_dtype = _torch_dtype_to_numpy(e.tensor.dtype)
        want_shape = e.rule.flax_shape(tuple(e.tensor.shape))
        if array.shape != want_shape or array.dtype != want_dtype:
            mismatched.append(
                (
                    f"{_path_str(path)} (torch {e.torch_key!r})",
                    _describe(want_shape, want_dtype),
                    _describe(array.shape, array.dtype),
                )
            )
            continue
        updates.append((e.tensor, _numpy_to_tensor(e.rule.to_torch(array))))
    if mismatched or (strict and (missing or unexpected)):
        raise ConversionError(
            f"variables do not fit {type(module).__name__}",
            missing=missing if strict else (),
            unexpected=unexpected if strict else (),
            mismatched=mismatched,
        )
    backup = [t.detach().clone() for t, _ in updates]
    with torch.no_grad():
        try:
            for target, new in updates:
                target.copy_(new)
        except BaseException:
            for (target, _), old in zip(updates, backup, strict=True):
                target.copy_(old)
            raise
    return LoadResult(missing, unexpected)
