"""Emitters for sorting, selection and scattered writes (registered on import): ``topk``,
``sort``, ``argsort``, ``diff``, ``histc``, ``bucketize``, ``meshgrid``, ``scatter``,
``scatter_reduce``, ``index_put``, ``index_add`` and ``copy_``: the ops next in line, by how
many architectures use them, in a census of the export graphs of a model library's base models.

Conventions: an op that returns ``(values, indices)`` in torch is written as that tuple (the
graph's ``getitem`` picks one); sorting is stable where torch's result depends on it (indices of
equal values come in their original order); torch's in-place writes (``index_put_``,
``scatter_``, ``copy_``) are functional updates, ``x.at[...].set(...)``, and later reads of
the tensor read the result (in-place writes into a view are refused at capture).
"""

from __future__ import annotations

import torch

from funcmod.port.ops import OpCall, register_op

__all__: list[str] = []  # registers emitters in funcmod.port.ops.OPS

aten = torch.ops.aten


def _dim(c: OpCall, i: int, name: str, default: int = -1) -> int:
    return c.arg(i, name, default) % max(len(c.in_shape(0)), 1)


def _topk(c: OpCall) -> str:
    # (x, k, dim=-1, largest=True, sorted=True); lax.top_k works on the last axis, largest first
    k, d = c.ra(1, "k"), _dim(c, 2, "dim")
    largest = c.arg(3, "largest", True)
    last = d == len(c.in_shape(0)) - 1
    x = c[0] if last else f"jnp.moveaxis({c[0]}, {d}, -1)"
    pair = f"jax.lax.top_k({x if largest else f'-{x}'}, {k})"
    if not largest:
        pair = f"(lambda v, i: (-v, i))(*{pair})"  # the smallest: top_k of -x, negated back
    if last:
        return pair
    return f"tuple(jnp.moveaxis(t, -1, {d}) for t in {pair})"


register_op(aten.topk, _topk)


def _sort(c: OpCall) -> str:
    # sort(x, dim=-1, descending=False); sort.stable(x, *, stable, dim=-1, descending=False)
    stable = c.node.target == aten.sort.stable
    d = _dim(c, 0 if stable else 1, "dim")
    desc = c.kwargs.get("descending", False) if stable else c.arg(2, "descending", False)
    kw = f"axis={d}, descending={desc}"
    return f"(jnp.sort({c[0]}, {kw}), jnp.argsort({c[0]}, {kw}, stable=True))"


register_op(aten.sort.default, _sort)
register_op(aten.sort.stable, _sort)


def _argsort(c: OpCall) -> str:
    stable = c.node.target == aten.argsort.stable
    d = c.kwargs.get("dim", -1) if stable else c.arg(1, "dim", -1)
    desc = c.kwargs.get("descending", False) if stable else c.arg(2, "descending", False)
    return f"jnp.argsort({c[0]}, axis={d}, descending={desc}, stable=True)"


register_op(aten.argsort.default, _argsort)
register_op(aten.argsort.stable, _argsort)


def _diff(c: OpCall) -> str:
    # (x, n=1, dim=-1, prepend=None, append=None); jnp.diff of bool is != as torch's
    parts = [c[0], f"n={c.ra(1, 'n', 1)}", f"axis={c.ra(2, 'dim', -1)}"]
    for i, name in [(3, "prepend"), (4, "append")]:
        if c.arg(i, name) is not None:
            parts.append(f"{name}={c.ra(i, name)}")
    return f"jnp.diff({', '.join(parts)})"


register_op(aten.diff, _diff)


def _histc(c: OpCall) -> str:
    # (x, bins=100, min=0, max=0): min == max == 0 takes the data's range; counts in x's dtype,
    # no gradient (torch's histc has none)
    bins, lo, hi = c.arg(1, "bins", 100), c.arg(2, "min", 0), c.arg(3, "max", 0)
    x = c[0]
    if lo == hi == 0:
        lo, hi = f"jnp.min({x})", f"jnp.max({x})"
    elif lo == hi:
        raise NotImplementedError(f"histc with min == max == {lo} (torch widens it by 1)")
    counts = f"jnp.histogram({x}, {c.r(bins)}, range=({lo}, {hi}))[0]"
    return f"jax.lax.stop_gradient({counts}.astype({x}.dtype))"


register_op(aten.histc, _histc)
register_op(
    aten.meshgrid.indexing,
    lambda c: f"jnp.meshgrid(*{c.r(list(c.arg(0)))}, indexing={c.ra(1, 'indexing', 'ij')})",
)
register_op(aten.meshgrid.default, lambda c: f"jnp.meshgrid(*{c.r(list(c.arg(0)))}, indexing='ij')")


def _scatter_where(c: OpCall) -> str:
    """The index tuple of ``scatter(x, dim, index, ...)``: index on ``dim``, the positions of
    index's own shape on every other axis."""
    d, i = _dim(c, 1, "dim"), c[2]
    grid = f"jnp.indices({i}.shape, sparse=True)"
    return f"tuple({i} if a == {d} else g for a, g in enumerate({grid}))"


def _scatter(c: OpCall) -> str:
    # (x, dim, index, value | src): x[..., index[i, j, ...] (on axis dim), ...] = value; the
    # other axes run over index's shape (torch's index may be smaller than x there)
    if c.kwargs.get("reduce") is not None or len(c.args) > 4:
        raise NotImplementedError("scatter with reduce= is not ported")
    i = c[2]
    where = _scatter_where(c)
    src = c.node.target in (aten.scatter.src, aten.scatter_.src)
    value = c.ra(3, "src" if src else "value")
    if src:  # the block of index's shape, in x's dtype
        value = f"{value}[tuple(slice(0, s) for s in {i}.shape)].astype({c[0]}.dtype)"
    return f"{c[0]}.at[{where}].set({value})"


for _op in [aten.scatter.value, aten.scatter.src]:
    register_op(_op, _scatter)
for _op in [aten.scatter_.value, aten.scatter_.src]:
    register_op(_op, _scatter, inplace=True)


def _index_put(c: OpCall) -> str:
    # (x, indices, values, accumulate=False): x[indices] = values (+= with accumulate)
    x, idx, acc = c[0], c.arg(1), c.arg(3, "accumulate", False)
    nodes = c.node.args[1]
    vals = [n.meta.get("val") if isinstance(n, torch.fx.Node) else None for n in nodes]
    values = f"{c[2]}.astype({x}.dtype)"
    if any(v is not None and v.dtype == torch.bool for v in vals):
        # a mask: only where it covers leading axes and the value is one element (x[mask] = 0)
        given = c.node.args[2].meta.get("val")
        if len(idx) != 1 or given is None or given.numel() != 1:
            raise NotImplementedError(
                "index_put with a boolean mask takes one mask and one value "
                f"(got {len(idx)} index(es), values of shape {tuple(given.shape)})"
            )
        extra = len(c.in_shape(0)) - vals[0].ndim  # the mask's trailing axes: broadcast
        mask = c.r(idx[0])
        if extra:
            mask += f"[{', '.join([':'] * vals[0].ndim + ['None'] * extra)}]"
        value = f"jnp.reshape({values}, ())"
        return f"{x} + jnp.where({mask}, {value}, 0)" if acc else f"jnp.where({mask}, {value}, {x})"
    parts = ", ".join(":" if i is None else c.r(i) for i in idx)
    return f"{x}.at[{parts}].{'add' if acc else 'set'}({values})"


def _index_add(c: OpCall) -> str:
    # (x, dim, index, source, alpha=1): x[:, ..., index[i], ...] += alpha * source[..., i, ...]
    d, alpha = _dim(c, 1, "dim"), c.kwargs.get("alpha", 1)
    src = c[3] if alpha == 1 else f"{c.r(alpha)} * {c[3]}"
    return f"{c[0]}.at[{':, ' * d}{c[2]}].add({src})"


register_op(aten.index_add, _index_add)

_REDUCE = {"sum": "add", "prod": "multiply", "amax": "max", "amin": "min"}


def _scatter_reduce(c: OpCall) -> str:
    # (x, dim, index, src, reduce, *, include_self=True): x's element combined with every src
    # element the index sends there
    reduce, include_self = c.arg(4, "reduce"), c.kwargs.get("include_self", True)
    if reduce not in _REDUCE or not include_self:
        raise NotImplementedError(
            f"scatter_reduce with reduce={reduce!r}, include_self={include_self} is not ported "
            f"(ported: {', '.join(_REDUCE)} with include_self=True)"
        )
    i = c[2]
    src = f"{c[3]}[tuple(slice(0, s) for s in {i}.shape)]"
    return f"{c[0]}.at[{_scatter_where(c)}].{_REDUCE[reduce]}({src})"


register_op(aten.scatter_reduce.two, _scatter_reduce)


def _bucketize(c: OpCall) -> str:
    # (x, boundaries, *, out_int32=False, right=False): torch's right=False is the first
    # boundary >= x, numpy's side="left"
    side = "right" if c.kwargs.get("right", False) else "left"
    return f"jnp.searchsorted({c[1]}, {c[0]}, side={side!r}).astype({c.dtypes(c.dtype)})"


register_op(aten.bucketize.Tensor, _bucketize)
register_op(aten.index_put, _index_put)
register_op(aten.index_put_, _index_put, inplace=True)
# copy_(x, src): x's shape and dtype, src's values
register_op(
    aten.copy_,
    lambda c: f"jnp.broadcast_to({c[1]}.astype({c[0]}.dtype), {c[0]}.shape)",
    inplace=True,
)
