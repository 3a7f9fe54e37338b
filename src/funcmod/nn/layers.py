"""Flax Linen layers built like their PyTorch counterparts: ``torch.nn.Linear`` and
``torch.nn.Conv2d``'s default initial distributions and explicit, symmetric padding."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from funcmod.nn.conv import conv_general_dilated
from funcmod.nn.init import torch_bias_init, torch_kernel_init

__all__ = ["torch_like_conv2d", "torch_like_dense"]

Dtype = Any


def torch_like_dense(
    in_features: int, out_features: int, param_dtype: Dtype = jnp.float32, name: str | None = None
) -> nn.Dense:
    """An ``nn.Dense`` initialised like ``torch.nn.Linear(in_features, out_features)``.

    ``in_features`` is needed only for the bias initialisation (its bound is 1/sqrt(fan_in));
    Flax infers the kernel's input size from the first input it sees.
    """
    return nn.Dense(
        out_features,
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_features),
        param_dtype=param_dtype,
        name=name,
    )


def torch_like_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    padding: int = 0,
    param_dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """An ``nn.Conv`` matching ``torch.nn.Conv2d(in, out, kernel_size, padding=padding)``.

    The padding is passed explicitly as ((p, p), (p, p)): Flax's default ``'SAME'`` pads
    asymmetrically when strided, PyTorch never does. The parameters are Flax's usual
    ``kernel`` (kernel_size, kernel_size, in, out) and ``bias`` (out,). The convolution is
    ``funcmod.nn.conv.conv_general_dilated``: on CPU each pass (forward, input and kernel
    gradient) takes the lowering ``funcmod.nn.conv_rule`` picks from the shapes (a fused
    few-tap sum for 3x3 on RGB, patches times kernel for many channels or small images, XLA's
    convolution otherwise); every other backend runs ``lax.conv_general_dilated``.
    """
    return nn.Conv(
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        padding=((padding, padding), (padding, padding)),
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_channels * kernel_size * kernel_size),
        param_dtype=param_dtype,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )
