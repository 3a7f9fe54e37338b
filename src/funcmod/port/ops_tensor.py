"""Emitters for elementwise tensor ops: arithmetic, comparisons, unary math, ``where``, casts
and the no-ops ``torch.export`` leaves in a graph (registered on import; shapes, reductions and
creation are in ``funcmod.port.ops_shape``).

Conventions: torch's dims may be negative, so are jnp's axes; a cast to the model's float
dtype is written ``astype(h.dtype)`` with ``h`` a tensor it derives from
(``funcmod.port.ops.OpCall.dtypes``); binary ops cast a tensor
operand whose dtype differs from the result's, since JAX's strict promotion would refuse what
torch promotes silently.
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from funcmod.port.ops import CHECKS, DROP, VALUES_ONLY, OpCall, Same, Var, register_op

__all__: list[str] = []  # registers emitters in funcmod.port.ops.OPS

aten = torch.ops.aten


def _operand(c: OpCall, i: int, dtype: torch.dtype | None) -> str:
    """Argument ``i`` as source: cast to ``dtype`` when it is a tensor of another dtype, and
    given leading axes of size 1 when its rank is below the output's (torch broadcasts ranks
    silently, JAX's ``rank_promotion='raise'`` would not)."""
    value = c.args[i] if i < len(c.args) else None
    node = c.node.args[i] if i < len(c.node.args) else None
    v = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    text = c.r(value)
    if not isinstance(value, Var) or not isinstance(v, torch.Tensor):
        return text
    missing = len(c.shape) - v.ndim
    if v.ndim and missing > 0:
        text = f"{text}[{', '.join(['None'] * missing)}]"
    if dtype is not None and v.dtype != dtype:
        text = f"{text}.astype({c.dtypes(dtype)})"
    return text


def _promoted(c: OpCall) -> torch.dtype | None:
    vals = [a.meta.get("val") for a in c.node.all_input_nodes]
    tensors = [v for v in vals if isinstance(v, torch.Tensor)]
    if not tensors:
        return None
    out = tensors[0]
    for t in tensors[1:]:
        out = torch.empty((), dtype=torch.promote_types(out.dtype, t.dtype))
    return out.dtype


def _binary(symbol: str, compare: bool = False):
    def emit(c: OpCall) -> str:
        dtype = _promoted(c) if compare else c.dtype
        a, b = _operand(c, 0, dtype), _operand(c, 1, dtype)
        alpha = c.kwargs.get("alpha", 1)
        if alpha != 1:
            b = f"{c.r(alpha)} * {b}"
        return f"{a} {symbol} {b}"

    return emit


def _func(name: str, *extra: str):
    def emit(c: OpCall) -> str:
        cast = c.dtype if c.dtype is not None and c.dtype.is_floating_point else None
        args = [_operand(c, i, cast) for i in range(len(c.args))]
        return f"{name}({', '.join([*args, *extra])})"

    return emit


for _op, _sym in [
    (aten.add, "+"),
    (aten.sub, "-"),
    (aten.mul, "*"),
    (aten.multiply, "*"),
    (aten.div.Tensor, "/"),
    (aten.div.Scalar, "/"),
    (aten.floor_divide, "//"),
    (aten.remainder, "%"),
    (aten.pow.Tensor_Scalar, "**"),
    (aten.pow.Tensor_Tensor, "**"),
    (aten.pow.Scalar, "**"),
    (aten.__and__, "&"),
    (aten.__or__, "|"),
    (aten.bitwise_and, "&"),
    (aten.bitwise_or, "|"),
    (aten.logical_and, "&"),
    (aten.logical_or, "|"),
]:
    register_op(_op, _binary(_sym))
for _op, _sym in [
    (aten.eq, "=="),
    (aten.ne, "!="),
    (aten.lt, "<"),
    (aten.le, "<="),
    (aten.gt, ">"),
    (aten.ge, ">="),
]:
    register_op(_op, _binary(_sym, compare=True))
for _op, _sym in [(aten.add_, "+"), (aten.sub_, "-"), (aten.mul_, "*"), (aten.div_.Tensor, "/")]:
    register_op(_op, _binary(_sym), inplace=True)
register_op(aten.div_.Scalar, _binary("/"), inplace=True)
register_op(aten.floor_divide_.Tensor, _binary("//"), inplace=True)
register_op(aten.rsub.Scalar, lambda c: f"{c.r(c.arg(1))} - {c[0]}")
register_op(aten.rsub.Tensor, lambda c: f"{c[1]} - {c[0]}")


def _div_mode(c: OpCall) -> str:
    mode = c.kwargs.get("rounding_mode", c.arg(2))
    a, b = _operand(c, 0, c.dtype), _operand(c, 1, c.dtype)
    if mode == "floor":
        return f"{a} // {b}" if not c.dtype.is_floating_point else f"jnp.floor({a} / {b})"
    if mode == "trunc":
        return f"jnp.trunc({a} / {b}).astype({c.dtypes(c.dtype)})"
    return f"{a} / {b}"


register_op(aten.div.Tensor_mode, _div_mode)
register_op(aten.div.Scalar_mode, _div_mode)

_UNARY = {
    aten.neg: "jnp.negative",
    aten.abs: "jnp.abs",
    aten.exp: "jnp.exp",
    aten.log: "jnp.log",
    aten.log1p: "jnp.log1p",
    aten.expm1: "jnp.expm1",
    aten.sqrt: "jnp.sqrt",
    aten.rsqrt: "jax.lax.rsqrt",
    aten.sin: "jnp.sin",
    aten.cos: "jnp.cos",
    aten.tan: "jnp.tan",
    aten.acos: "jnp.arccos",
    aten.asin: "jnp.arcsin",
    aten.atan: "jnp.arctan",
    aten.tanh: "jnp.tanh",
    aten.sigmoid: "jax.nn.sigmoid",
    aten.erf: "jax.scipy.special.erf",
    aten.reciprocal: "jnp.reciprocal",
    aten.square: "jnp.square",
    aten.sign: "jnp.sign",
    aten.floor: "jnp.floor",
    aten.ceil: "jnp.ceil",
    aten.round: "jnp.round",
    aten.trunc: "jnp.trunc",
    aten.bitwise_not: "jnp.logical_not",
    aten.logical_not: "jnp.logical_not",
    aten.isnan: "jnp.isnan",
    aten.isinf: "jnp.isinf",
}
for _op, _fn in _UNARY.items():
    register_op(_op, _func(_fn))
for _op, _fn in [
    (aten.neg_, "jnp.negative"),
    (aten.exp_, "jnp.exp"),
    (aten.sigmoid_, "jax.nn.sigmoid"),
]:
    register_op(_op, _func(_fn), inplace=True)
register_op(
    aten.bitwise_not, lambda c: f"~{c[0]}" if c.dtype != torch.bool else f"jnp.logical_not({c[0]})"
)
register_op(aten.atan2, _func("jnp.arctan2"))
register_op(aten.maximum, _func("jnp.maximum"))
register_op(aten.minimum, _func("jnp.minimum"))
register_op(aten.max.other, _func("jnp.maximum"))
register_op(aten.min.other, _func("jnp.minimum"))


def _clamp(c: OpCall) -> str:
    lo, hi = c.arg(1, "min"), c.arg(2, "max")
    return f"jnp.clip({c[0]}, {c.r(lo)}, {c.r(hi)})"


register_op(aten.clamp.default, _clamp)
register_op(aten.clamp.Tensor, _clamp)
register_op(aten.clamp_.default, _clamp, inplace=True)
register_op(aten.clamp_min, lambda c: f"jnp.maximum({c[0]}, {c[1]})")
register_op(aten.clamp_max, lambda c: f"jnp.minimum({c[0]}, {c[1]})")
register_op(aten.clamp_min_, lambda c: f"jnp.maximum({c[0]}, {c[1]})", inplace=True)


def _where(c: OpCall) -> str:
    a, b = _operand(c, 1, c.dtype), _operand(c, 2, c.dtype)
    return f"jnp.where({_operand(c, 0, None)}, {a}, {b})"


register_op(aten.where.self, _where)
register_op(aten.where.ScalarOther, _where)
register_op(aten.where.ScalarSelf, _where)
register_op(aten.where.Scalar, _where)
register_op(
    aten.masked_fill.Scalar,
    lambda c: f"jnp.where({_operand(c, 1, None)}, {c[2]}, {_operand(c, 0, None)})",
)
register_op(
    aten.masked_fill_.Scalar,
    lambda c: f"jnp.where({_operand(c, 1, None)}, {c[2]}, {_operand(c, 0, None)})",
    inplace=True,
)
register_op(
    aten.masked_fill.Tensor,
    lambda c: f"jnp.where({c[1]}, {c[2]}.astype({c[0]}.dtype), {c[0]})",
)

# --- no-ops and casts ----------------------------------------------------------------------------

for _op in [
    aten._assert_tensor_metadata,
    aten._assert_scalar,
    aten.sym_constrain_range_for_size,
    aten.sym_constrain_range,
    aten._assert_async,
]:
    register_op(_op, lambda c: DROP)
    CHECKS.add(_op)
# what only checks read (torch._check_tensor_all: _is_all_true -> item -> sym_ite -> assert) is
# never written; where generated code reads them, they are what torch computes
register_op(aten._is_all_true, lambda c: f"jnp.all({c[0]})")
register_op(aten.item, lambda c: f"jnp.reshape({c[0]}, ())")
register_op(torch.sym_ite, lambda c: f"({c[1]} if {c[0]} else {c[2]})")
for _op in [aten.contiguous, aten.alias, aten.clone, aten.lift_fresh_copy]:
    register_op(_op, lambda c: Same(c.arg(0)))
# detach stops the gradient in torch: so does the port
register_op(aten.detach, lambda c: f"jax.lax.stop_gradient({c[0]})")
register_op(aten.detach_, lambda c: f"jax.lax.stop_gradient({c[0]})", inplace=True)


def _cast(c: OpCall):
    if c.dtype is None or (c.dtype == c.in_dtype(0) and c.alt_is_noop_cast()):
        return Same(c.arg(0))
    return f"{c[0]}.astype({c.dtypes(c.dtype)})"


for _op in [aten.to, aten._to_copy, aten.type_as]:
    register_op(_op, _cast)


def _getitem(c: OpCall):
    src = c.node.args[0]
    if isinstance(src, torch.fx.Node) and src.target in VALUES_ONLY:
        if c.arg(1) != 0:
            raise NotImplementedError(f"the indices {src.target} returns are not ported")
        return Same(c.arg(0))
    return f"{c[0]}[{c[1]}]"


register_op(operator.getitem, _getitem)
register_op(aten.sym_size.int, lambda c: f"{c[0]}.shape[{c[1]}]")
for _fn, _sym in [
    (operator.add, "+"),
    (operator.sub, "-"),
    (operator.mul, "*"),
    (operator.floordiv, "//"),
    (operator.truediv, "/"),
    (operator.mod, "%"),
    (operator.eq, "=="),
    (operator.ne, "!="),
    (operator.lt, "<"),
    (operator.le, "<="),
    (operator.gt, ">"),
    (operator.ge, ">="),
]:
    register_op(_fn, lambda c, s=_sym: f"{c[0]} {s} {c[1]}")
