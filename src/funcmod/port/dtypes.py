"""Dtypes in the generated source: how a statement writes a dtype that torch's graph names.

A graph names dtypes as constants (``_to_copy(x, dtype=torch.float32)``, ``arange(...,
dtype=...)``), whether the model's code wrote ``.to(h.dtype)`` or ``.float()``. The paired
float64 capture (``funcmod.port.capture``) tells them apart: a float dtype that is float64 in
that capture *follows the model's dtype*, one that stays float32 was named by the code.

* A dtype that follows the model's is written as the dtype of a tensor the statement derives
  from (``h.dtype``): the nearest ancestor in the graph whose dtype follows the model's and
  that has a name in the class, else any such name (an input, a parameter). A float32 port run
  under JAX's x64 mode then stays float32, and its float64 variables make it float64, as
  torch's ``.to(h.dtype)`` does. Only where the class holds no such tensor is it ``float``,
  JAX's default float (float32, float64 under x64).
* A float dtype the model's code names is written as itself (``jnp.float32``).
* Other dtypes: ``int`` for int64 (JAX's default integer), ``bool``, ``jnp.<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

__all__ = ["dtype_writer", "follows_model", "node_writer", "source_of"]

_NAME = re.compile(r"[A-Za-z_][\w.]*")
_SEARCH_LIMIT = 512  # ancestors visited before falling back to any name in the class


def dtype_writer(capture_float: torch.dtype) -> Callable[[torch.dtype], str]:
    """The plain writer: the capture's float dtype as ``float``."""

    def write(dtype: torch.dtype) -> str:
        if dtype == capture_float:
            return "float"
        if dtype == torch.int64:
            return "int"
        if dtype == torch.bool:
            return "bool"
        return "jnp." + str(dtype).removeprefix("torch.")

    return write


def follows_model(node: torch.fx.Node, capture_float: torch.dtype) -> bool:
    """Whether ``node`` is a tensor whose dtype is the model's float dtype: the capture's float
    dtype, and float64 in the paired float64 capture where there is one (placeholders, the
    parameters, buffers and float inputs, all have the model's dtype)."""
    v = node.meta.get("val")
    if not isinstance(v, torch.Tensor) or v.dtype != capture_float:
        return False
    alt = node.meta.get("_port_alt")
    if alt is None:
        return True
    w = alt.meta.get("val")
    return isinstance(w, torch.Tensor) and w.dtype == torch.float64


def source_of(
    node: torch.fx.Node | None, env: dict[torch.fx.Node, str], capture_float: torch.dtype
) -> str | None:
    """A name bound in the class (``env``: graph node -> source) whose dtype follows the model's:
    the nearest ancestor of ``node`` first, then the first such name bound; None if none."""

    def usable(n: torch.fx.Node) -> str | None:
        name = env.get(n)
        if name is not None and _NAME.fullmatch(name) and follows_model(n, capture_float):
            return name
        return None

    seen: set[torch.fx.Node] = set()
    frontier = list(node.all_input_nodes) if node is not None else []
    while frontier and len(seen) < _SEARCH_LIMIT:
        ahead = []
        for a in frontier:
            if a in seen:
                continue
            seen.add(a)
            found = usable(a)
            if found:
                return found
            ahead.extend(a.all_input_nodes)
        frontier = ahead
    return next((name for n in env if (name := usable(n))), None)


def _dtypes_of(node: torch.fx.Node) -> list[Any]:
    vals = [node.meta.get("val")]
    found = [v.dtype for v in vals if isinstance(v, torch.Tensor)]
    found += [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.dtype)]
    return found


def node_writer(
    node: torch.fx.Node | None,
    plain: Callable[[torch.dtype], str],
    capture_float: torch.dtype,
    source: Callable[[], str | None],
) -> Callable[[torch.dtype], str]:
    """The dtype writer for ``node``'s statement: the capture's float dtype as ``<source>.dtype``
    where it follows the model's (``source()`` is asked only then), as itself
    (``jnp.float32``) where the paired float64 capture says the model's code names it."""
    alt = node.meta.get("_port_alt") if node is not None else None
    follows = alt is None or any(
        a == capture_float and b == torch.float64
        for a, b in zip(_dtypes_of(node), _dtypes_of(alt), strict=False)
    )

    def write(dtype: torch.dtype) -> str:
        if dtype != capture_float:
            return plain(dtype)
        if not follows:
            return "jnp." + str(dtype).removeprefix("torch.")
        name = source()
        return f"{name}.dtype" if name else plain(dtype)

    return write
