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
                  num_batches_tracked     -> batch_stats/num_batches_tracked (momentum=None
                                             only; int64 <-> JAX's default int, exact)
    LayerNorm     weight, bias            -> params/scale, params/bias
    Embedding     weight (num, dim)       -> params/embedding (num, dim)

Tensors registered directly on a module that has no rule (``nn.Parameter`` attributes,
``register_parameter``) are copied as they are, under their own name; persistent buffers go to
the ``buffers`` collection. Children keep their attribute names, except that an
``nn.Sequential``'s children become ``layers_0, layers_1, ...`` by position and an
``nn.ModuleList``/``nn.ModuleDict`` attribute ``blocks`` flattens to ``blocks_0``/``blocks_<key>``
(nested: ``blocks_0_1``), the names Flax gives to the elements of a list or dict attribute
(``funcmod.convert_walk``). Several-tensor rules (recurrent layers, MultiheadAttention,
weight_norm) are ``GroupRule``s (``funcmod.convert_groups``); tied tensors convert once
(``tied_parameters``). Register rules for your own layer types with ``register_rule``.
``flax_to_state_dict`` gives torch-named numpy arrays without a materialised module; files
(torch-named safetensors) are ``funcmod.convert_files``.

Both directions are strict by default, like ``load_state_dict``: every missing key, unexpected key
and shape or dtype that does not fit is collected and raised as one ``ConversionError``, and
nothing is written when it is raised. torch -> flax -> torch is bitwise lossless (conversion only
transposes; it never casts).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from flax import traverse_util
from torch import nn

from funcmod.convert_groups import (
    ConversionError,
    GroupRule,
    LayerRule,
    LeafRule,
    _path_str,
    mha_groups,
    rnn_groups,
    strip_prefix,
    unwrap,
)
from funcmod.convert_walk import (
    _describe,
    _Entry,
    _numpy_to_tensor,
    _refuse_unmaterialised,
    _tensor_to_numpy,
    _to_jax,
    _torch_dtype_to_numpy,
)
from funcmod.convert_walk import _walk_all as _walk_with

__all__ = [
    "RULES",
    "ConversionError",
    "GroupRule",
    "LayerRule",
    "LeafRule",
    "LoadResult",
    "check_against_template",
    "flax_to_state_dict",
    "flax_to_torch",
    "register_rule",
    "tied_parameters",
    "torch_grads_to_flax",
    "torch_to_flax",
]


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
# momentum=None: the running statistics are a cumulative average over num_batches_tracked steps,
# so the count is state the next update reads and converts too (funcmod.nn.BatchNorm keeps it).
_BATCHNORM_CUMULATIVE = LayerRule(
    (
        *_BATCHNORM.leaves,
        LeafRule("num_batches_tracked", "num_batches_tracked", "batch_stats", counter=True),
    )
)


def _batchnorm(module: nn.Module) -> LayerRule:
    cumulative = module.momentum is None and module.track_running_stats
    return _BATCHNORM_CUMULATIVE if cumulative else _BATCHNORM


# ConvTranspose's weight (in, out/groups, *k) takes the forward convolution's permutation, to
# kernel (*k, out/groups, in): a pure transpose, so the round trip is bitwise. The layer
# (funcmod.nn.ConvTransposeNd) flips the kernel and swaps its channel axes when it runs; the
# permutation (2, 3, 0, 1) has the same shape for in == out/groups and is wrong without that flip.
_CONV_TRANSPOSE = LayerRule(
    (LeafRule("weight", "kernel", perm=_channels_last_kernel), LeafRule("bias", "bias"))
)
# Bilinear's weight (out, in1, in2) -> kernel (in1, in2, out), inputs first as in a Dense kernel.
_BILINEAR = LayerRule((LeafRule("weight", "kernel", perm=(1, 2, 0)), LeafRule("bias", "bias")))
_PRELU = LayerRule((LeafRule("weight", "negative_slope"),))

RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: _LINEAR,
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Conv3d: _CONV,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.BatchNorm3d: _batchnorm,
    nn.LayerNorm: _NORM,
    nn.GroupNorm: _NORM,
    nn.RMSNorm: _NORM,
    nn.InstanceNorm1d: _BATCHNORM,
    nn.InstanceNorm2d: _BATCHNORM,
    nn.InstanceNorm3d: _BATCHNORM,
    nn.ConvTranspose1d: _CONV_TRANSPOSE,
    nn.ConvTranspose2d: _CONV_TRANSPOSE,
    nn.ConvTranspose3d: _CONV_TRANSPOSE,
    nn.Bilinear: _BILINEAR,
    nn.PReLU: _PRELU,
    nn.Embedding: LayerRule((LeafRule("weight", "embedding"),)),
}


# Rules whose tensors depend on the instance (layer count, packing) are functions of the module.
RULES.update(
    {
        nn.RNNBase: lambda m: LayerRule((), groups=rnn_groups(m)),
        nn.MultiheadAttention: lambda m: LayerRule((), groups=mha_groups(m)),
    }
)


def register_rule(
    torch_type: type[nn.Module], *leaves: LeafRule | GroupRule, ignored: tuple[str, ...] = ()
) -> None:
    """Teach the converter a torch layer type, for example your own layer::

        register_rule(MyDense, LeafRule("w", "kernel", perm=(1, 0)), LeafRule("b", "bias"))

    A ``GroupRule`` maps several tensors to several leaves (``funcmod.convert_groups``). Tensors
    of the layer that no rule names (and that are not in ``ignored``) are still copied as they
    are, so a rule only needs the tensors that are renamed, transposed, split or joined.
    """
    if not (isinstance(torch_type, type) and issubclass(torch_type, nn.Module)):
        raise TypeError(f"register_rule expects an nn.Module subclass, got {torch_type!r}")
    singles = tuple(r for r in leaves if isinstance(r, LeafRule))
    groups = tuple(r for r in leaves if isinstance(r, GroupRule))
    if len(singles) + len(groups) != len(leaves):
        raise TypeError(f"register_rule expects LeafRule or GroupRule objects, got {leaves!r}")
    RULES[torch_type] = LayerRule(singles, frozenset(ignored), groups)


def _rule_for(module: nn.Module) -> LayerRule | None:
    for cls in type(module).__mro__:  # the most specific registered type wins
        if cls in RULES:
            rule = RULES[cls]
            return rule if isinstance(rule, LayerRule) else rule(module)
    return None


def _walk_all(module: nn.Module) -> tuple[list[_Entry], dict[str, Any]]:
    return _walk_with(module, _rule_for)


def _entries(module: nn.Module) -> list[_Entry]:
    """Every tensor of ``module`` that has a Flax counterpart, with its Flax paths (once)."""
    return _walk_all(module)[0]


def tied_parameters(module: nn.Module) -> dict[str, str]:
    """Tied tensors: each later state_dict key -> the key whose Flax leaf holds the tensor.

    ``torch_to_flax`` gives a tied tensor one leaf, under the first name in module order;
    ``flax_to_torch`` writes it once (a tree that also carries an alias must agree with it).
    """
    return {k: first for k, (_, first) in _walk_all(unwrap(module))[1].items()}


# --- public API ---------------------------------------------------------------------------------


def torch_to_flax(
    module: nn.Module,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    template: Any = None,
) -> dict[str, Any]:
    """Flax variables holding the weights of a torch module.

    Args:
      module: the torch module; its layer types and attribute names decide the Flax names. A
        ``torch.compile``, DistributedDataParallel or DataParallel wrapper converts as the
        module it wraps.
      state_dict: take the tensors from this state dict instead of the module (for example a
        checkpoint you have not loaded into the module). Checked strictly against the module's
        own keys and shapes. Values may be torch tensors or numpy arrays. Keys that all start
        with ``'module.'`` (DDP) or ``'_orig_mod.'`` (torch.compile), where the module's own
        keys do not, are converted with that prefix stripped, with a warning that says so.
      template: optional Flax variables or their shapes, e.g.
        ``jax.eval_shape(model.init, key, x)``; the result is checked against it leaf by leaf.

    Returns:
      ``{'params': {...}}``, plus ``'batch_stats'`` for BatchNorm statistics and ``'buffers'``
      for other persistent buffers, as nested dicts of ``jax.Array``.

    Raises:
      ConversionError: a state dict or template that does not fit, listing every offending key
        with both shapes; a float64 tensor while ``jax_enable_x64`` is off; tensors with no
        values (uninitialised lazy modules; meta-device tensors unless ``state_dict`` is given).
    """
    module = unwrap(module)
    entries = _entries(module)
    _refuse_unmaterialised(module, entries, meta_ok=state_dict is not None)
    if state_dict is not None:
        state_dict = {
            k: v if isinstance(v, torch.Tensor) else _numpy_to_tensor(np.asarray(v))
            for k, v in state_dict.items()
        }
        prefix = strip_prefix(list(state_dict))
        if prefix and not any(k.startswith(prefix) for e in entries for k in e.torch_keys):
            warnings.warn(
                f"state_dict keys start with {prefix!r} (a wrapper's); converted with it stripped",
                stacklevel=2,
            )
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
        tensors = _check_state_dict(module, entries, state_dict)
    else:
        tensors = {k: t for e in entries for k, t in zip(e.torch_keys, e.tensors, strict=True)}
    flat = {}
    for e in entries:
        arrays = e.to_flax([_tensor_to_numpy(tensors[k]) for k in e.torch_keys])
        for path, a in zip(e.flax_paths, arrays, strict=True):
            flat[path] = _to_jax(a, _path_str(path))
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
    for e in _entries(unwrap(module)):
        if e.flax_paths[0][0] != "params":
            continue
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in e.tensors]
        # A copy: the numpy view would change under a later in-place op on .grad.
        for path, a in zip(
            e.flax_paths, e.to_flax([_tensor_to_numpy(g) for g in grads]), strict=True
        ):
            flat[path] = np.array(a)
    return traverse_util.unflatten_dict(flat)


def _check_state_dict(
    module: nn.Module, entries: list[_Entry], state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    expected = {k: t for e in entries for k, t in zip(e.torch_keys, e.tensors, strict=True)}
    ignored = set(module.state_dict().keys()) - set(expected)  # incl. tied aliases
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


def check_against_template(
    variables: Any,
    template: Any,
    *,
    dtypes: bool = True,
    context: str = "converted variables do not match the Flax template",
) -> None:
    """Raise ``ConversionError`` unless ``variables`` has exactly the keys, shapes and (with
    ``dtypes``) dtypes of ``template`` (Flax variables, or ``jax.ShapeDtypeStruct`` leaves from
    ``jax.eval_shape``). ``context`` opens the error message."""
    got = traverse_util.flatten_dict(variables)
    want = traverse_util.flatten_dict(template)

    def differ(k: tuple[str, ...]) -> bool:
        if np.shape(want[k]) != np.shape(got[k]):
            return True
        return dtypes and np.dtype(want[k].dtype) != got[k].dtype

    missing = [_path_str(k) for k in want if k not in got]
    unexpected = [_path_str(k) for k in got if k not in want]
    mismatched = [
        (
            _path_str(k),
            _describe(np.shape(want[k]), want[k].dtype),
            _describe(np.shape(got[k]), got[k].dtype),
        )
        for k in want
        if k in got and differ(k)
    ]
    if missing or unexpected or mismatched:
        raise ConversionError(
            context, missing=missing, unexpected=unexpected, mismatched=mismatched
        )


class LoadResult(NamedTuple):
    """What ``flax_to_torch(..., strict=False)`` skipped, like ``load_state_dict``'s result."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _plan_load(
    variables: Mapping[str, Any], module: nn.Module, *, strict: bool, meta_ok: bool
) -> tuple[list[tuple[str, torch.Tensor, np.ndarray]], dict[str, Any], LoadResult]:
    """Every check of ``flax_to_torch``, nothing written: (state_dict key, target tensor, its new
    value in torch's layout) for each tensor, the tied aliases, and what was skipped."""
    entries, aliases = _walk_all(module)
    _refuse_unmaterialised(module, entries, meta_ok=meta_ok)
    flat = traverse_util.flatten_dict(dict(variables))
    alias_paths = {a.flax_paths[0]: (k, a, first) for k, (a, first) in aliases.items()}
    expected = {p for e in entries for p in e.flax_paths}
    missing = [_path_str(k) for e in entries for k in e.flax_paths if k not in flat]
    unexpected = [_path_str(k) for k in flat if k not in expected and k not in alias_paths]
    updates: list[tuple[str, torch.Tensor, np.ndarray]] = []
    by_key: dict[str, np.ndarray] = {}
    mismatched = []
    for e in [*entries, *(a for _, a, _ in alias_paths.values())]:
        if any(p not in flat for p in e.flax_paths):
            continue
        arrays = [np.asarray(flat[p]) for p in e.flax_paths]
        bad = [
            (
                f"{_path_str(p)} (torch {', '.join(map(repr, e.torch_keys))})",
                _describe(w, want_dtype),
                _describe(a.shape, a.dtype),
            )
            for p, a, w, want_dtype in zip(
                e.flax_paths, arrays, e.flax_shapes(), e.flax_dtypes(), strict=True
            )
            if a.shape != w or a.dtype != want_dtype
        ]
        mismatched += bad
        if bad:
            continue
        for key, t, a in zip(e.torch_keys, e.tensors, e.to_torch(arrays), strict=True):
            if key in aliases:  # a tied alias: must agree with the leaf that holds the tensor
                first = aliases[key][1]
                if first in by_key and not np.array_equal(by_key[first], a):
                    mismatched.append(
                        (
                            f"tied {key!r} ({_path_str(e.flax_paths[0])})",
                            f"the value of {first!r}",
                            "a different value",
                        )
                    )
                continue
            by_key[key] = a
            updates.append((key, t, a))
    if mismatched or (strict and (missing or unexpected)):
        raise ConversionError(
            f"variables do not fit {type(module).__name__}",
            missing=missing if strict else (),
            unexpected=unexpected if strict else (),
            mismatched=mismatched,
        )
    return updates, aliases, LoadResult(missing, unexpected)


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
      ConversionError: listing every offending key with both shapes and dtypes; a tied tensor
        carried under two names with different values (naming both); meta-device or
        uninitialised lazy tensors in ``module`` (materialise them first, e.g.
        ``module.to_empty(device='cpu')``). The module is left exactly as it was.
    """
    module = unwrap(module)
    planned, _, result = _plan_load(variables, module, strict=strict, meta_ok=False)
    updates = [(t, _numpy_to_tensor(a)) for _, t, a in planned]
    backup = [t.detach().clone() for t, _ in updates]
    with torch.no_grad():
        try:
            for target, new in updates:
                target.copy_(new)
        except BaseException:
            for (target, _), old in zip(updates, backup, strict=True):
                target.copy_(old)
            raise
    return result


def flax_to_state_dict(
    variables: Mapping[str, Any], module: nn.Module, *, strict: bool = True
) -> dict[str, np.ndarray]:
    """Flax variables as a torch-named state dict of numpy arrays, in torch's layouts; the module
    is only read for its structure, so it may live on the meta device
    (``with torch.device('meta'): model = MyNet()``): nothing is allocated or written.

    The keys are those ``module.state_dict()`` has, a tied tensor under each of its names (the
    same array), except counters conversion ignores (BatchNorm's ``num_batches_tracked``, which
    ``load_state_dict`` fills in). Checks and raises as ``flax_to_torch``.
    """
    module = unwrap(module)
    planned, aliases, _ = _plan_load(variables, module, strict=strict, meta_ok=True)
    state = {key: a for key, _, a in planned}
    for alias, (_, first) in aliases.items():
        if first in state:
            state[alias] = state[first]
    return {k: state[k] for k in module.state_dict() if k in state}
