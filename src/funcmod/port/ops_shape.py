"""Emitters for shapes, indexing, reductions, products and tensor creation (registered on
import). Shapes come from the traced values (``OpCall.in_shape``); sizes a graph computes
symbolically are ``Var``s like any other value.
"""

from __future__ import annotations

import torch

from funcmod.port.ops import OpCall, Same, register_op

__all__: list[str] = []  # registers emitters in funcmod.port.ops.OPS

aten = torch.ops.aten
INT64_MAX = 2**63 - 1


# --- shapes ---------------------------------------------------------------------------------------


def _reshape(c: OpCall) -> str:
    return f"jnp.reshape({c[0]}, {c[1]})"


for _op in [aten.view.default, aten.reshape, aten._unsafe_view]:
    register_op(_op, _reshape, shape_comment=True)
register_op(
    aten.view.dtype, lambda c: f"jax.lax.bitcast_convert_type({c[0]}, {c.dtypes(c.arg(1))})"
)
register_op(aten.view_as, lambda c: f"jnp.reshape({c[0]}, {c[1]}.shape)", shape_comment=True)
register_op(aten.reshape_as, lambda c: f"jnp.reshape({c[0]}, {c[1]}.shape)", shape_comment=True)
register_op(
    aten.transpose.int, lambda c: f"jnp.swapaxes({c[0]}, {c[1]}, {c[2]})", shape_comment=True
)
register_op(aten.t, lambda c: f"{c[0]}.T", shape_comment=True)
register_op(aten.numpy_T, lambda c: f"{c[0]}.T", shape_comment=True)
register_op(aten.permute, lambda c: f"jnp.transpose({c[0]}, {c[1]})", shape_comment=True)
register_op(aten.unsqueeze, lambda c: f"jnp.expand_dims({c[0]}, {c[1]})")


def _squeeze(c: OpCall):
    shape = c.in_shape(0)
    dims = c.arg(1)
    if dims is None:
        return f"jnp.squeeze({c[0]})"
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    keep = tuple(d % len(shape) for d in dims if shape and shape[d] == 1) if shape else ()
    if not keep:
        return Same(c.arg(0))  # torch squeezes only axes of size 1
    return f"jnp.squeeze({c[0]}, {c.r(keep if len(keep) > 1 else keep[0])})"


for _op in [aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default]:
    register_op(_op, _squeeze)


def _expand(c: OpCall) -> str:
    sizes = list(c.arg(1))
    ndim = len(c.in_shape(0))
    lead = len(sizes) - ndim
    out = [f"{c[0]}.shape[{i - lead}]" if s == -1 else c.r(s) for i, s in enumerate(sizes)]
    return f"jnp.broadcast_to({c[0]}, ({', '.join(out)}{',' if len(out) == 1 else ''}))"


register_op(aten.expand, _expand)
register_op(aten.expand_as, lambda c: f"jnp.broadcast_to({c[0]}, {c[1]}.shape)")
register_op(aten.broadcast_to, lambda c: f"jnp.broadcast_to({c[0]}, {c[1]})")


def _flatten(c: OpCall) -> str:
    ndim = max(len(c.in_shape(0)), 1)
    start, end = c.arg(1, "start_dim", 0) % ndim, c.arg(2, "end_dim", -1) % ndim
    x = c[0]
    head = f"*{x}.shape[:{start}], " if start else ""
    tail = f", *{x}.shape[{end + 1}:]" if end < ndim - 1 else ""
    return f"jnp.reshape({x}, ({head}-1{tail}))" if (head or tail) else f"jnp.reshape({x}, (-1,))"


register_op(aten.flatten.using_ints, _flatten, shape_comment=True)


def _unflatten(c: OpCall) -> str:
    ndim = len(c.in_shape(0))
    d = c.arg(1) % ndim
    x = c[0]
    sizes = ", ".join(c.r(s) for s in c.arg(2))
    head = f"*{x}.shape[:{d}], " if d else ""
    tail = f", *{x}.shape[{d + 1}:]" if d < ndim - 1 else ""
    return f"jnp.reshape({x}, ({head}{sizes}{tail}))"


register_op(aten.unflatten.int, _unflatten, shape_comment=True)


def _index_prefix(dim: int) -> str:
    return ":, " * dim


def _select(c: OpCall) -> str:
    ndim = len(c.in_shape(0))
    d = c.arg(1) % ndim
    return f"{c[0]}[{_index_prefix(d)}{c[2]}]"


register_op(aten.select.int, _select)


def _slice(c: OpCall):
    ndim = len(c.in_shape(0))
    d = c.arg(1, "dim", 0) % ndim
    start, end, step = c.arg(2, "start"), c.arg(3, "end"), c.arg(4, "step", 1)
    if isinstance(end, int) and end >= INT64_MAX:
        end = None
    if start in (0, None) and end is None and step == 1:
        return Same(c.arg(0))
    s = f"{'' if start in (0, None) else c.r(start)}:{'' if end is None else c.r(end)}"
    s += "" if step == 1 else f":{c.r(step)}"
    return f"{c[0]}[{_index_prefix(d)}{s}]"


register_op(aten.slice.Tensor, _slice)


def _narrow(c: OpCall) -> str:
    d = c.arg(1) % len(c.in_shape(0))
    return f"{c[0]}[{_index_prefix(d)}{c[2]}:{c[2]} + {c[3]}]"


register_op(aten.narrow, _narrow)


def _index(c: OpCall) -> str:
    parts = [":" if i is None else c.r(i) for i in c.arg(1)]
    return f"{c[0]}[{', '.join(parts)}]"


register_op(aten.index.Tensor, _index)
register_op(aten.cat, lambda c: f"jnp.concatenate({c.r(list(c.arg(0)))}, axis={c.ra(1, 'dim', 0)})")
register_op(
    aten.concat, lambda c: f"jnp.concatenate({c.r(list(c.arg(0)))}, axis={c.ra(1, 'dim', 0)})"
)
register_op(
    aten.concatenate,
    lambda c: f"jnp.concatenate({c.r(list(c.arg(0)))}, axis={c.ra(1, 'dim', 0)})",
)
register_op(aten.broadcast_tensors, lambda c: f"jnp.broadcast_arrays(*{c.r(list(c.arg(0)))})")


def _unfold(c: OpCall) -> str:
    # x.unfold(dim, size, step): windows along dim, (..., L, ...) -> (..., n, ..., size)
    d = c.arg(1) % max(len(c.in_shape(0)), 1)
    size, step, n = c.arg(2), c.arg(3), c.shape[d]
    starts = f"jnp.arange({n})[:, None] * {step} + jnp.arange({size})[None]"  # (n, size)
    return f"jnp.moveaxis(jnp.take({c[0]}, {starts}, axis={d}), {d + 1}, -1)"


register_op(aten.unfold, _unfold, shape_comment=True)
register_op(aten.stack, lambda c: f"jnp.stack({c.r(list(c.arg(0)))}, axis={c.ra(1, 'dim', 0)})")


def _split_points(sizes: list[int]) -> list[int]:
    points, total = [], 0
    for s in sizes[:-1]:
        total += s
        points.append(total)
    return points


def _split(c: OpCall) -> str:
    shape = c.in_shape(0)
    d = c.arg(2, "dim", 0)
    n, size = shape[d], c.arg(1)
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * -(-n // size)
    if not isinstance(size, (list, tuple)):
        sizes[-1] = n - size * (len(sizes) - 1)
    return f"jnp.split({c[0]}, {_split_points(sizes)}, axis={d})"


register_op(aten.split.Tensor, _split)
register_op(aten.split_with_sizes, _split)


def _chunk(c: OpCall) -> str:
    shape = c.in_shape(0)
    d = c.arg(2, "dim", 0)
    n, chunks = shape[d], c.arg(1)
    size = -(-n // chunks)
    sizes = [size] * (-(-n // size))
    sizes[-1] = n - size * (len(sizes) - 1)
    return f"jnp.split({c[0]}, {_split_points(sizes)}, axis={d})"


register_op(aten.chunk, _chunk)
register_op(aten.unbind.int, lambda c: f"list(jnp.moveaxis({c[0]}, {c.ra(1, 'dim', 0)}, 0))")
register_op(aten.gather, lambda c: f"jnp.take_along_axis({c[0]}, {c[2]}, axis={c[1]})")
register_op(aten.index_select, lambda c: f"jnp.take({c[0]}, {c[2]}, axis={c[1]})")
register_op(aten.tril, lambda c: f"jnp.tril({c[0]}, {c.ra(1, 'diagonal', 0)})")
register_op(aten.triu, lambda c: f"jnp.triu({c[0]}, {c.ra(1, 'diagonal', 0)})")
register_op(
    aten.repeat_interleave.self_int,
    lambda c: f"jnp.repeat({c[0]}, {c[1]}, axis={c.ra(2, 'dim', None)})",
)


def _repeat(c: OpCall) -> str:
    reps = list(c.arg(1))
    ndim = len(c.in_shape(0))
    x = c[0]
    if len(reps) > ndim:
        x = f"jnp.reshape({x}, {(1,) * (len(reps) - ndim)} + {x}.shape)"
    return f"jnp.tile({x}, {c.r(tuple(reps))})"


register_op(aten.repeat, _repeat)
register_op(aten.tile, lambda c: f"jnp.tile({c[0]}, {c[1]})")
register_op(aten.roll, lambda c: f"jnp.roll({c[0]}, {c[1]}, axis={c.ra(2, 'dims', None)})")
register_op(aten.flip, lambda c: f"jnp.flip({c[0]}, axis={c[1]})")
register_op(aten.outer, lambda c: f"jnp.outer({c[0]}, {c[1]})")

# --- reductions and products --------------------------------------------------------------------


def _reduce(fn: str):
    def emit(c: OpCall) -> str:
        dims = c.arg(1, "dim")
        keep = c.arg(2, "keepdim", False)
        axis = (
            ""
            if dims in (None, [], ())
            else f", axis={c.r(tuple(dims) if isinstance(dims, list) else dims)}"
        )
        x = c[0]
        dt = c.kwargs.get("dtype")
        if dt is not None:
            x = f"{x}.astype({c.dtypes(dt)})"
        return f"{fn}({x}{axis}{', keepdims=True' if keep else ''})"

    return emit


register_op(aten.mean.dim, _reduce("jnp.mean"))
register_op(aten.mean.default, _reduce("jnp.mean"))
register_op(aten.sum.dim_IntList, _reduce("jnp.sum"))
register_op(aten.sum.default, _reduce("jnp.sum"))
register_op(aten.amax, _reduce("jnp.max"))
register_op(aten.amin, _reduce("jnp.min"))
register_op(aten.logsumexp, _reduce("jax.nn.logsumexp"))
register_op(aten.prod.dim_int, _reduce("jnp.prod"))
register_op(aten.all.dim, _reduce("jnp.all"))
register_op(aten.any.dim, _reduce("jnp.any"))
register_op(aten.any.dims, _reduce("jnp.any"))
register_op(aten.all.default, lambda c: f"jnp.all({c[0]})")
register_op(aten.any.default, lambda c: f"jnp.any({c[0]})")
register_op(aten.max.default, lambda c: f"jnp.max({c[0]})")
register_op(aten.min.default, lambda c: f"jnp.min({c[0]})")


def _max_dim(fn: str, arg: str):
    def emit(c: OpCall) -> str:
        keep = ", keepdims=True" if c.arg(2, "keepdim", False) else ""
        return f"({fn}({c[0]}, axis={c[1]}{keep}), {arg}({c[0]}, axis={c[1]}{keep}))"

    return emit


register_op(aten.max.dim, _max_dim("jnp.max", "jnp.argmax"))
register_op(aten.min.dim, _max_dim("jnp.min", "jnp.argmin"))


def _argmax(fn: str):
    def emit(c: OpCall) -> str:
        dim = c.arg(1, "dim")
        keep = ", keepdims=True" if c.arg(2, "keepdim", False) else ""
        axis = "" if dim is None else f", axis={c.r(dim)}"
        return f"{fn}({c[0]}{axis}{keep})"

    return emit


register_op(aten.argmax, _argmax("jnp.argmax"))
register_op(aten.argmin, _argmax("jnp.argmin"))


def _var(fn: str):
    def emit(c: OpCall) -> str:
        dims = c.arg(1, "dim")
        corr = c.kwargs.get("correction", 1)
        if "unbiased" in c.kwargs or (len(c.args) > 2 and isinstance(c.args[2], bool)):
            corr = 1 if c.arg(2, "unbiased", True) else 0
        keep = ", keepdims=True" if c.kwargs.get("keepdim", False) else ""
        axis = "" if dims is None else f", axis={c.r(tuple(dims))}"
        return f"{fn}({c[0]}{axis}, ddof={c.r(corr)}{keep})"

    return emit


for _op in [aten.var.dim, aten.var.correction]:
    register_op(_op, _var("jnp.var"))
for _op in [aten.std.dim, aten.std.correction]:
    register_op(_op, _var("jnp.std"))
register_op(
    aten.cumsum,
    lambda c: (
        f"jnp.cumsum({c[0]}, axis={c[1]}"
        + (f", dtype={c.dtypes(c.dtype)})" if c.dtype != c.in_dtype(0) else ")")
    ),
)


def _vector_norm(c: OpCall) -> str:
    ord_, dims, keep = c.arg(1, "ord", 2), c.arg(2, "dim"), c.arg(3, "keepdim", False)
    axis = "None" if dims is None else c.r(tuple(dims))
    return f"jnp.linalg.vector_norm({c[0]}, ord={c.r(ord_)}, axis={axis}, keepdims={keep})"


register_op(aten.linalg_vector_norm, _vector_norm)


def _norm(c: OpCall) -> str:
    # linalg_norm(x, ord=None, dim=None, keepdim=False): numpy's norm, as jnp.linalg.norm
    dims = c.arg(2, "dim")
    axis = "None" if dims is None else c.r(tuple(dims))
    keep = c.arg(3, "keepdim", False)
    return f"jnp.linalg.norm({c[0]}, ord={c.ra(1, 'ord')}, axis={axis}, keepdims={keep})"


register_op(aten.linalg_norm.default, _norm)
for _op in [aten.matmul, aten.bmm, aten.mm]:
    register_op(_op, lambda c: f"{c[0]} @ {c[1]}")
register_op(aten.einsum, lambda c: f"jnp.einsum({c[0]}, {', '.join(c.r(t) for t in c.arg(1))})")


def _addmm(c: OpCall) -> str:
    beta, alpha = c.kwargs.get("beta", 1), c.kwargs.get("alpha", 1)
    prod = f"{c[1]} @ {c[2]}" if alpha == 1 else f"{c.r(alpha)} * ({c[1]} @ {c[2]})"
    bias = c[0] if beta == 1 else f"{c.r(beta)} * {c[0]}"
    return f"{bias} + {prod}"


register_op(aten.addmm, _addmm)
register_op(aten.baddbmm, _addmm)

# --- creation ------------------------------------------------------------------------------------


def _dtype_kw(c: OpCall) -> str:
    return f"dtype={c.dtypes(c.dtype)}"


def _arange(c: OpCall) -> str:
    args = ", ".join(c.r(a) for a in c.args)
    return f"jnp.arange({args}, {_dtype_kw(c)})"


for _op in [aten.arange.default, aten.arange.start, aten.arange.start_step]:
    register_op(_op, _arange)
register_op(aten.zeros, lambda c: f"jnp.zeros({c[0]}, {_dtype_kw(c)})")
register_op(aten.ones, lambda c: f"jnp.ones({c[0]}, {_dtype_kw(c)})")
register_op(aten.empty.memory_format, lambda c: f"jnp.zeros({c[0]}, {_dtype_kw(c)})")
register_op(aten.full, lambda c: f"jnp.full({c[0]}, {c[1]}, {_dtype_kw(c)})")
register_op(aten.scalar_tensor, lambda c: f"jnp.asarray({c[0]}, {_dtype_kw(c)})")
register_op(aten.zeros_like, lambda c: f"jnp.zeros({c[0]}.shape, {_dtype_kw(c)})")
register_op(aten.ones_like, lambda c: f"jnp.ones({c[0]}.shape, {_dtype_kw(c)})")
register_op(aten.empty_like, lambda c: f"jnp.zeros({c[0]}.shape, {_dtype_kw(c)})")
register_op(aten.full_like, lambda c: f"jnp.full({c[0]}.shape, {c[1]}, {_dtype_kw(c)})")
register_op(aten.new_zeros, lambda c: f"jnp.zeros({c[1]}, {_dtype_kw(c)})")
register_op(aten.new_ones, lambda c: f"jnp.ones({c[1]}, {_dtype_kw(c)})")
register_op(aten.new_empty, lambda c: f"jnp.zeros({c[1]}, {_dtype_kw(c)})")
register_op(aten.new_full, lambda c: f"jnp.full({c[1]}, {c[2]}, {_dtype_kw(c)})")
register_op(aten.eye, lambda c: f"jnp.eye({', '.join(c.r(a) for a in c.args)}, {_dtype_kw(c)})")
register_op(
    aten.linspace,
    lambda c: f"jnp.linspace({c[0]}, {c[1]}, {c[2]}, {_dtype_kw(c)})",
)
register_op(aten.fill_.Scalar, lambda c: f"jnp.full_like({c[0]}, {c[1]})", inplace=True)
register_op(
    aten.fill_.Tensor,
    lambda c: f"jnp.broadcast_to({c[1]}.astype({c[0]}.dtype), {c[0]}.shape)",
    inplace=True,
)
register_op(aten.zero_, lambda c: f"jnp.zeros_like({c[0]})", inplace=True)
