"""The op table: each ATen op (a call target of a ``torch.export`` graph) and the emitter that
writes it as one JAX statement of the generated source.

An emitter is a function of an ``OpCall`` (the node's arguments, already resolved) that returns

* a Python expression (a string), assigned to the node's variable;
* ``Same(value)``: the node is the value it was given (``contiguous``, ``alias``, a cast that
  changes nothing): no statement, later uses read ``value``;
* ``DROP``: the node has no value anyone reads (``_assert_tensor_metadata``): no statement.

``register_op(op, emitter)`` adds or replaces an entry; ``op`` is an ATen overload
(``torch.ops.aten.add.Tensor``), an overload packet (``torch.ops.aten.add``: every overload) or
any other call target (``operator.getitem``). In-place ops (``add_``) are registered with
``inplace=True``: the emitter writes the functional op and later reads of the mutated tensor
read its result.

The emitters themselves live in ``funcmod.port.ops_tensor`` (elementwise, casts),
``funcmod.port.ops_shape`` (shapes, reductions, creation), ``funcmod.port.ops_nn``
(``torch.nn.functional``'s ops) and ``funcmod.port.ops_index`` (sorting, scattered writes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

__all__ = [
    "CHECKS",
    "DROP",
    "OPS",
    "VALUES_ONLY",
    "OpCall",
    "OpEntry",
    "Same",
    "lookup_op",
    "register_op",
    "render",
]


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


@dataclass(frozen=True)
class Same:
    """The node's value is ``value`` (a rendered expression or a ``Var``)."""

    value: Any


@dataclass(frozen=True)
class Var:
    """A name in the generated source (a graph value already assigned)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class OpEntry:
    """One row of the op table ``OPS``: the emitter that writes an ATen op as Flax source, and
    whether the op works in place or changes a layout."""

    emitter: Callable[[OpCall], Any]
    inplace: bool = False  # mutates its first argument: later reads see the result
    shape_comment: bool = False  # a layout change: the statement gets "# (in) -> (out)"


OPS: dict[Any, OpEntry] = {}

# Ops that return ``(values, indices)`` in torch and whose emitter writes the values alone: the
# graph's ``getitem(node, 0)`` is the node itself, and reading the indices is refused.
VALUES_ONLY: set[Any] = set()

# Runtime checks (``_assert_scalar``, ...): no statement, and a value only they read is dead.
CHECKS: set[Any] = set()


def register_op(
    op: Any,
    emitter: Callable[[OpCall], Any],
    *,
    inplace: bool = False,
    shape_comment: bool = False,
) -> None:
    """Teach the porter a call target: ``emitter(call) -> str | Same | DROP``.

    Example, for an op the table lacks::

        register_op(torch.ops.aten.erfinv.default, lambda c: f"jax.scipy.special.erfinv({c[0]})")

    ``c[i]`` is the i-th argument rendered as source, ``c.arg(i, name, default)`` its value
    (a ``Var`` for a tensor), ``c.shape`` / ``c.dtype`` the output's, ``c.train`` the name of
    the train flag (reading it makes the generated ``__call__`` take ``train``).
    """
    if not callable(emitter):
        raise TypeError(f"register_op: emitter must be callable, got {emitter!r}")
    OPS[op] = OpEntry(emitter, inplace, shape_comment)


def lookup_op(target: Any) -> OpEntry | None:
    """The entry for a call target: the exact overload first, then its packet."""
    entry = OPS.get(target)
    if entry is None and isinstance(target, torch._ops.OpOverload):
        entry = OPS.get(target.overloadpacket)
    return entry


def _render_float(v: float) -> str:
    if math.isinf(v):
        return "jnp.inf" if v > 0 else "-jnp.inf"
    if math.isnan(v):
        return "jnp.nan"
    return repr(v)


def render(value: Any, dtypes: Callable[[torch.dtype], str]) -> str:
    """Python source for an argument value: names, numbers, sequences, dtypes."""
    if isinstance(value, Var):
        return value.name
    if isinstance(value, Same):
        return render(value.value, dtypes)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, torch.dtype):
        return dtypes(value)
    if isinstance(value, tuple):
        inner = ", ".join(render(v, dtypes) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return (
            "("
            + ", ".join(render(v, dtypes) for v in value)
            + ("," if len(value) == 1 else "")
            + ")"
        )
    if isinstance(value, (torch.device, torch.layout, torch.memory_format)):
        return "None"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as source")


@dataclass
class OpCall:
    """One graph node as its emitter sees it.

    Attributes:
      node: the ``torch.fx`` node (its ``meta['val']`` is the traced output).
      args, kwargs: the node's arguments with graph values replaced by ``Var``s.
      train: the name of the train flag in the generated ``__call__``.
      uses_train: set by ``c.train`` reads; the code generator threads ``train`` then.
      dtypes: writes a torch dtype as source (the capture's float dtype, where it follows the
        model's, as the dtype of a tensor the node derives from, ``h.dtype``: the same source
        runs in float32 and float64; ``funcmod.port.dtypes``).
    """

    node: torch.fx.Node
    args: tuple
    kwargs: dict
    dtypes: Callable[[torch.dtype], str]
    alt: torch.fx.Node | None = None  # the same node in the float64 capture, when paired
    uses_train: bool = False
    uses_rng: bool = False
    preamble: list[str] = field(default_factory=list)

    def __getitem__(self, i: int) -> str:
        return self.r(self.args[i])

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        if i < len(self.args):
            return self.args[i]
        if name is not None and name in self.kwargs:
            return self.kwargs[name]
        return default

    def r(self, value: Any) -> str:
        return render(value, self.dtypes)

    def ra(self, i: int, name: str | None = None, default: Any = None) -> str:
        return self.r(self.arg(i, name, default))

    @property
    def train(self) -> str:
        self.uses_train = True
        return "train"

    def rng(self, stream: str = "dropout") -> str:
        self.uses_rng = True
        return f"self.make_rng({stream!r})"

    @property
    def val(self) -> Any:
        return self.node.meta.get("val")

    @property
    def shape(self) -> tuple:
        v = self.val
        return tuple(v.shape) if isinstance(v, torch.Tensor) else ()

    @property
    def dtype(self) -> torch.dtype | None:
        v = self.val
        return v.dtype if isinstance(v, torch.Tensor) else None

    def in_shape(self, i: int = 0) -> tuple:
        a = self.node.args[i] if i < len(self.node.args) else None
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        return tuple(v.shape) if isinstance(v, torch.Tensor) else ()

    def follows_model_dtype(self, i: int = 0) -> bool:
        """Whether the output's (or, for ``i``, the input's) dtype is the model's: it is
        float64 in the float64 capture. Unknown without a float64 capture: True."""
        if self.alt is None:
            return True
        a = self.alt.args[i] if i < len(self.alt.args) else None
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        return isinstance(v, torch.Tensor) and v.dtype == torch.float64

    def alt_is_noop_cast(self) -> bool:
        """Whether the float64 capture's node keeps its input's dtype too (or there is none)."""
        if self.alt is None:
            return True
        out, a = self.alt.meta.get("val"), self.alt.args[0] if self.alt.args else None
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        return (
            isinstance(out, torch.Tensor) and isinstance(v, torch.Tensor) and out.dtype == v.dtype
        )

    def in_dtype(self, i: int = 0) -> torch.dtype | None:
        a = self.node.args[i] if i < len(self.node.args) else None
        v = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
        return v.dtype if isinstance(v, torch.Tensor) else None
