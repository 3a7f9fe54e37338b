"""Emitters for ``torch.nn.functional``'s ops: each one a call into ``funcmod.nn.functional``
(imported as ``F`` in the generated source), which computes what torch computes, channels
first. Weights reach these ops in torch's layout (a ``Linear``'s weight (out, in)); the
emitters transpose them to the Flax layout ``funcmod.nn.functional`` takes, with a comment.

Dropout follows the train flag: a graph is captured in eval mode, where torch's dropout is
the identity, and the generated code applies it when called with ``train=True``.
"""

from __future__ import annotations

import torch

from funcmod.port.ops import VALUES_ONLY, OpCall, Same, register_op

__all__: list[str] = []  # registers emitters in funcmod.port.ops.OPS

aten = torch.ops.aten


def _opt(c: OpCall, i: int, name: str, default=None) -> str:
    return c.r(c.arg(i, name, default))


def _linear(c: OpCall) -> str:
    bias = c.arg(2, "bias")
    b = "" if bias is None else f", {c.r(bias)}"
    return f"F.linear({c[0]}, {c[1]}.T{b})"  # weight (out, in) -> kernel (in, out)


register_op(aten.linear, _linear)


def _kernel(c: OpCall, i: int) -> str:
    ndim = len(c.in_shape(i))
    perm = (*range(2, ndim), 1, 0)  # (out, in, *k) -> (*k, in, out)
    return f"jnp.transpose({c[i]}, {perm})"


def _nd(c: OpCall) -> int:
    return len(c.in_shape(1)) - 2


def _conv(c: OpCall) -> str:
    bias = c.arg(2, "bias")
    stride, padding = c.arg(3, "stride", 1), c.arg(4, "padding", 0)
    dilation, groups = c.arg(5, "dilation", 1), c.arg(6, "groups", 1)
    return (
        f"F.conv{_nd(c)}d({c[0]}, {_kernel(c, 1)}, {c.r(bias)}, stride={c.r(stride)}, "
        f"padding={c.r(padding)}, dilation={c.r(dilation)}, groups={c.r(groups)})"
    )


for _op in [aten.conv1d, aten.conv2d, aten.conv3d]:
    register_op(_op, _conv)


def _convolution(c: OpCall) -> str:
    # aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)
    if c.arg(6):
        return (
            f"F.conv_transpose{_nd(c)}d({c[0]}, {_kernel(c, 1)}, {c[2]}, stride={c[3]}, "
            f"padding={c[4]}, output_padding={c[7]}, groups={c[8]}, dilation={c[5]})"
        )
    return (
        f"F.conv{_nd(c)}d({c[0]}, {_kernel(c, 1)}, {c[2]}, stride={c[3]}, padding={c[4]}, "
        f"dilation={c[5]}, groups={c[8]})"
    )


register_op(aten.convolution, _convolution)


def _conv_transpose(c: OpCall) -> str:
    # (x, w, b, stride, padding, output_padding, groups, dilation); w (in, out/g, *k)
    return (
        f"F.conv_transpose{_nd(c)}d({c[0]}, {_kernel(c, 1)}, {_opt(c, 2, 'bias')}, "
        f"stride={_opt(c, 3, 'stride', 1)}, padding={_opt(c, 4, 'padding', 0)}, "
        f"output_padding={_opt(c, 5, 'output_padding', 0)}, groups={_opt(c, 6, 'groups', 1)}, "
        f"dilation={_opt(c, 7, 'dilation', 1)})"
    )


for _op in [aten.conv_transpose1d, aten.conv_transpose2d.input, aten.conv_transpose3d.input]:
    register_op(_op, _conv_transpose)


def _embedding(c: OpCall) -> str:
    pad = c.arg(2, "padding_idx", -1)
    return f"F.embedding({c[1]}, {c[0]}{'' if pad == -1 else f', padding_idx={pad}'})"


register_op(aten.embedding, _embedding)
register_op(
    aten.layer_norm,
    lambda c: (
        f"F.layer_norm({c[0]}, {c[1]}, {_opt(c, 2, 'weight')}, {_opt(c, 3, 'bias')}, "
        f"{_opt(c, 4, 'eps', 1e-5)})"
    ),
)
register_op(
    aten.rms_norm,
    lambda c: f"F.rms_norm({c[0]}, {c[1]}, {_opt(c, 2, 'weight')}, {_opt(c, 3, 'eps')})",
)
register_op(
    aten.group_norm,
    lambda c: (
        f"F.group_norm({c[0]}, {c[1]}, {_opt(c, 2, 'weight')}, {_opt(c, 3, 'bias')}, "
        f"{_opt(c, 4, 'eps', 1e-5)})"
    ),
)


def _batch_norm(c: OpCall) -> str:
    # (x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    w, b, mean, var = (c.arg(i) for i in range(1, 5))
    training, eps = c.arg(5), c.arg(7)
    ndim = len(c.in_shape(0))
    axes = tuple(i for i in range(ndim) if i != 1)
    shape = (1, -1) + (1,) * (ndim - 2)
    if training or mean is None:
        m = f"jnp.mean({c[0]}, axis={axes}, keepdims=True)"
        v = f"jnp.var({c[0]}, axis={axes}, keepdims=True)"
    else:
        m, v = f"jnp.reshape({c.r(mean)}, {shape})", f"jnp.reshape({c.r(var)}, {shape})"
    y = f"({c[0]} - {m}) * jax.lax.rsqrt({v} + {c.r(eps)})"
    if w is not None:
        y = f"{y} * jnp.reshape({c.r(w)}, {shape})"
    if b is not None:
        y = f"{y} + jnp.reshape({c.r(b)}, {shape})"
    return y


register_op(aten.batch_norm, _batch_norm)


def _dropout(c: OpCall):
    p = c.arg(1, "p", 0.5)
    if p == 0:
        return Same(c.arg(0))
    train = c.train
    return f"F.dropout({c[0]}, {c.r(p)}, {train}, key={c.rng()} if {train} else None)"


register_op(aten.dropout, _dropout)
register_op(aten.dropout_, _dropout, inplace=True)
register_op(aten.feature_dropout, _dropout)

_ACT = {
    aten.relu: "F.relu",
    aten.silu: "F.silu",
    aten.hardswish: "F.hardswish",
    aten.hardsigmoid: "F.hardsigmoid",
    aten.mish: "F.mish",
    aten.relu6: "F.relu6",
    aten.log_sigmoid: "jax.nn.log_sigmoid",
}
for _op, _fn in _ACT.items():
    register_op(_op, lambda c, f=_fn: f"{f}({c[0]})")
for _op, _fn in [
    (aten.relu_, "F.relu"),
    (aten.silu_, "F.silu"),
    (aten.hardswish_, "F.hardswish"),
    (aten.hardsigmoid_, "F.hardsigmoid"),
]:
    register_op(_op, lambda c, f=_fn: f"{f}({c[0]})", inplace=True)
register_op(aten.gelu, lambda c: f"F.gelu({c[0]}, approximate={_opt(c, 1, 'approximate', 'none')})")
register_op(
    aten.gelu_,
    lambda c: f"F.gelu({c[0]}, approximate={_opt(c, 1, 'approximate', 'none')})",
    inplace=True,
)
register_op(
    aten.hardtanh,
    lambda c: f"jnp.clip({c[0]}, {_opt(c, 1, 'min_val', -1.0)}, {_opt(c, 2, 'max_val', 1.0)})",
)
register_op(
    aten.hardtanh_,
    lambda c: f"jnp.clip({c[0]}, {_opt(c, 1, 'min_val', -1.0)}, {_opt(c, 2, 'max_val', 1.0)})",
    inplace=True,
)
register_op(
    aten.leaky_relu, lambda c: f"F.leaky_relu({c[0]}, {_opt(c, 1, 'negative_slope', 0.01)})"
)
register_op(
    aten.leaky_relu_,
    lambda c: f"F.leaky_relu({c[0]}, {_opt(c, 1, 'negative_slope', 0.01)})",
    inplace=True,
)
register_op(aten.elu, lambda c: f"F.elu({c[0]}, {_opt(c, 1, 'alpha', 1.0)})")
register_op(aten.prelu, lambda c: f"F.prelu({c[0]}, {c[1]})")
register_op(aten.glu, lambda c: f"jax.nn.glu({c[0]}, axis={_opt(c, 1, 'dim', -1)})")


def _softplus(c: OpCall) -> str:
    beta, threshold = c.arg(1, "beta", 1.0), c.arg(2, "threshold", 20.0)
    x = c[0]
    return (
        f"jnp.where({x} * {c.r(beta)} > {c.r(threshold)}, {x}, "
        f"jax.nn.softplus({x} * {c.r(beta)}) / {c.r(beta)})"
    )


register_op(aten.softplus, _softplus)
register_op(aten.softmax.int, lambda c: f"F.softmax({c[0]}, {c[1]})")
register_op(aten._softmax, lambda c: f"F.softmax({c[0]}, {c[1]})")
register_op(aten.log_softmax.int, lambda c: f"F.log_softmax({c[0]}, {c[1]})")
register_op(aten._log_softmax, lambda c: f"F.log_softmax({c[0]}, {c[1]})")


def _sdpa(c: OpCall) -> str:
    # (q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False)
    parts = [c[0], c[1], c[2]]
    mask, p = c.arg(3, "attn_mask"), c.arg(4, "dropout_p", 0.0)
    causal = c.arg(5, "is_causal", False)
    if mask is not None:
        parts.append(f"attn_mask={c.r(mask)}")
    if causal:
        parts.append("is_causal=True")
    if c.kwargs.get("scale") is not None:
        parts.append(f"scale={c.r(c.kwargs['scale'])}")
    if c.kwargs.get("enable_gqa"):
        parts.append("enable_gqa=True")
    if p:
        train = c.train
        parts.append(f"dropout_p={c.r(p)} if {train} else 0.0")
        parts.append(f"dropout_rng={c.rng()} if {train} else None")
    return f"F.scaled_dot_product_attention({', '.join(parts)})"


register_op(aten.scaled_dot_product_attention, _sdpa)


def _max_pool(c: OpCall) -> str:
    k, s = c.arg(1, "kernel_size"), c.arg(2, "stride") or None
    p, d, ceil = c.arg(3, "padding", 0), c.arg(4, "dilation", 1), c.arg(5, "ceil_mode", False)
    fn = "F.max_pool1d" if len(c.in_shape(0)) == 3 else "F.max_pool2d"
    return f"{fn}({c[0]}, {c.r(k)}, {c.r(s)}, {c.r(p)}, {c.r(d)}, {c.r(ceil)})"


register_op(aten.max_pool2d, _max_pool)
register_op(aten.max_pool1d, _max_pool)


def _avg_pool(c: OpCall) -> str:
    k, s = c.arg(1, "kernel_size"), c.arg(2, "stride") or None
    p, ceil = c.arg(3, "padding", 0), c.arg(4, "ceil_mode", False)
    cip = c.arg(5, "count_include_pad", True)
    fn = "F.avg_pool1d" if len(c.in_shape(0)) == 3 else "F.avg_pool2d"
    return f"{fn}({c[0]}, {c.r(k)}, {c.r(s)}, {c.r(p)}, {c.r(ceil)}, {c.r(cip)})"


register_op(aten.avg_pool2d, _avg_pool)
register_op(aten.avg_pool1d, _avg_pool)
register_op(aten.adaptive_avg_pool2d, lambda c: f"F.adaptive_avg_pool2d({c[0]}, {c[1]})")
register_op(aten.adaptive_avg_pool1d, lambda c: f"F.adaptive_avg_pool1d({c[0]}, {c[1]})")
# torch returns (values, indices); the port computes the values (torch's bins, overlapping where
# the size does not divide: 7 -> 3 reads [0, 3), [2, 5), [4, 7))
register_op(aten.adaptive_max_pool2d, lambda c: f"F.adaptive_max_pool2d({c[0]}, {c[1]})")
VALUES_ONLY.add(aten.adaptive_max_pool2d.default)


def _upsample(mode: str):
    def emit(c: OpCall) -> str:
        size = c.arg(1)
        scale = c.arg(3) if mode != "nearest" else c.arg(2)
        align = c.arg(2) if mode != "nearest" else None
        out = f"size={c.r(tuple(size))}" if size is not None else f"scale_factor={c.r(scale)}"
        extra = f", align_corners={c.r(align)}" if mode != "nearest" else ""
        return f"F.interpolate({c[0]}, {out}, mode={mode!r}{extra})"

    return emit


register_op(aten.upsample_nearest2d.vec, _upsample("nearest"))
register_op(aten.upsample_nearest1d.vec, _upsample("nearest"))
register_op(aten.upsample_bilinear2d.vec, _upsample("bilinear"))
register_op(aten.upsample_linear1d.vec, _upsample("linear"))
register_op(
    aten.pad,
    lambda c: (
        f"F.pad({c[0]}, {c[1]}, {_opt(c, 2, 'mode', 'constant')}, {c.r(c.arg(3, 'value') or 0.0)})"
    ),
)
register_op(
    aten.constant_pad_nd, lambda c: f"F.pad({c[0]}, {c[1]}, 'constant', {_opt(c, 2, 'value', 0.0)})"
)


def _im2col(c: OpCall) -> str:
    # F.unfold: (N, C, H, W) -> (N, C * kh * kw, L), features channel-major as torch's
    k, dil, pad, stride = (tuple(c.arg(i)) for i in range(1, 5))
    patches = (
        f"jax.lax.conv_general_dilated_patches({c[0]}, {k}, {stride}, "
        f"{[(p, p) for p in pad]}, rhs_dilation={dil})"
    )
    return f"jnp.reshape({patches}, ({c[0]}.shape[0], {c.shape[1]}, -1))"


register_op(aten.im2col, _im2col, shape_comment=True)
register_op(aten.pixel_shuffle, lambda c: f"F.pixel_shuffle({c[0]}, {c[1]})")


def _weight_norm(c: OpCall) -> str:
    # torch._weight_norm(v, g, dim): v * (g / ||v||), the norm over every axis but ``dim``
    ndim = len(c.in_shape(0))
    dim = c.arg(2, "dim", 0) % ndim
    axes = tuple(i for i in range(ndim) if i != dim)
    return f"{c[0]} * ({c[1]} / jnp.sqrt(jnp.sum(jnp.square({c[0]}), axis={axes}, keepdims=True)))"


register_op(aten._weight_norm, _weight_norm)


def _mse(c: OpCall) -> str:
    reduction = {0: "none", 1: "mean", 2: "sum"}[c.arg(2, "reduction", 1)]
    return f"F.mse_loss({c[0]}, {c[1]}, reduction={reduction!r})"


register_op(aten.mse_loss, _mse)
register_op(aten.one_hot, lambda c: f"jax.nn.one_hot({c[0]}, {c[1]}, dtype={c.dtypes(c.dtype)})")
