"""Flax NNX layers built like their PyTorch counterparts: ``torch.nn.Linear`` and
``torch.nn.Conv2d``'s default initial distributions and explicit, symmetric padding."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from funcmod.nn.init import torch_bias_init, torch_kernel_init

__all__ = ["torch_like_conv2d", "torch_like_linear"]

Dtype = Any


def torch_like_linear(
    in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype: Dtype = jnp.float32
) -> nnx.Linear:
    """An ``nnx.Linear`` initialised like ``torch.nn.Linear(in_features, out_features)``.

    Kernel (in, out) and bias (out,) are both U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_features),
        param_dtype=param_dtype,
        rngs=rngs,
    )


def torch_like_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    padding: int = 0,
    *,
    rngs: nnx.Rngs,
    param_dtype: Dtype = jnp.float32,
) -> nnx.Conv:
    """An ``nnx.Conv`` matching ``torch.nn.Conv2d(in, out, kernel_size, padding=padding)``.

    Kernel (kH, kW, in, out). The padding is explicit, ((p, p), (p, p)): NNX's default
    ``'SAME'`` pads asymmetrically when strided, PyTorch never does.
    """
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        padding=((padding, padding), (padding, padding)),
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_channels * kernel_size * kernel_size),
        param_dtype=param_dtype,
        rngs=rngs,
    )
