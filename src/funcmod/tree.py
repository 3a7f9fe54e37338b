"""Pytree helpers that every comparison in funcmod goes through (no torch needed).

``compare_trees`` is the one tree-aware comparison: it pairs the leaves of two pytrees by path
and reports, per leaf, the max absolute error and the max relative error.

The relative error of a leaf is ``max|actual - expected| / max|expected|``: the error measured
against the leaf's own scale. An element-wise relative error is meaningless where the reference
crosses zero (a ReLU output, a gradient that vanishes), which every layer here produces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jax
import numpy as np

__all__ = [
    "LeafDiff",
    "assert_trees_close",
    "compare_trees",
    "count_params",
    "leaves_with_paths",
    "path_str",
]


def path_str(keypath: Sequence[Any]) -> str:
    """A key path as a string: ``(DictKey('params'), DictKey('fc'))`` -> ``'params/fc'``."""
    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaves_with_paths(tree: Any) -> dict[str, Any]:
    """The leaves of a pytree keyed by their ``'a/b/c'`` path, in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(p): leaf for p, leaf in flat}


def count_params(variables: Any) -> int:
    """Number of scalars in ``variables['params']`` (or in the whole tree if it has no 'params'),
    the number PyTorch's ``sum(p.numel() for p in module.parameters())`` gives."""
    tree = variables.get("params", variables) if isinstance(variables, Mapping) else variables
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@dataclass(frozen=True)
class LeafDiff:
    """How far one leaf is from its reference."""

    path: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _leaf_diff(path: str, actual: Any, expected: Any, rtol: float, atol: float) -> LeafDiff:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{path}: shapes differ: actual {a.shape}, expected {b.shape}")
    if a.size == 0:  # an empty leaf would pass while comparing nothing
        raise ValueError(f"{path}: leaf of shape {a.shape} has no elements to compare")
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and NaN pairs agree
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
    max_abs = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
    finite_b = np.abs(b[np.isfinite(b)])
    scale = float(finite_b.max()) if finite_b.size else 0.0
    if max_abs == 0.0:
        max_rel = 0.0
    elif scale == 0.0 or math.isinf(max_abs):
        max_rel = math.inf
    else:
        max_rel = max_abs / scale
    return LeafDiff(path, a.shape, max_abs, max_rel, bool(max_rel <= rtol or max_abs <= atol))


def compare_trees(actual: Any, expected: Any, *, rtol: float, atol: float = 0.0) -> list[LeafDiff]:
    """Compare two pytrees leaf by leaf.

    A leaf passes when its max relative error is at most ``rtol`` or its max absolute error at
    most ``atol``. NaN in one tree where the other has a number counts as an infinite error.

    Raises:
      ValueError: the trees have different leaf paths (naming them), a leaf's shapes differ, a
        leaf has no elements, or neither tree has a leaf: comparing nothing would pass vacuously.
    """
    a = leaves_with_paths(actual)
    b = leaves_with_paths(expected)
    if not a and not b:
        raise ValueError("both trees have no leaves: there is nothing to compare")
    if a.keys() != b.keys():
        only_a = sorted(a.keys() - b.keys())
        only_b = sorted(b.keys() - a.keys())
        raise ValueError(
            f"trees have different leaves: only in actual {only_a}, only in expected {only_b}"
        )
    return [_leaf_diff(path, a[path], b[path], rtol, atol) for path in b]


def assert_trees_close(
    actual: Any, expected: Any, *, rtol: float, atol: float = 0.0, what: str = "trees"
) -> list[LeafDiff]:
    """``compare_trees``, raising AssertionError that names every failing leaf and its errors."""
    diffs = compare_trees(actual, expected, rtol=rtol, atol=atol)
    bad = [d for d in diffs if not d.ok]
    if bad:
        lines = [f"{what}: {len(bad)} of {len(diffs)} leaves differ (rtol={rtol}, atol={atol})"]
        lines += [
            f"  {d.path} {d.shape}: max abs {d.max_abs:.3e}, max rel {d.max_rel:.3e}" for d in bad
        ]
        raise AssertionError("\n".join(lines))
    return diffs
