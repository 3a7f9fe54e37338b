"""Torch-faithful Flax building blocks, torch-free.

* ``funcmod.nn.init``: PyTorch's default initial distributions as Flax initialisers.
* ``funcmod.nn.layers``: Linen ``Dense`` / ``Conv`` built like ``torch.nn.Linear`` / ``Conv2d``.
* ``funcmod.nn.nnx_layers``: the same for Flax NNX.
* ``funcmod.nn.conv``: the convolution those layers run (a direct few-tap sum on CPU).
* ``funcmod.nn.interop``: one parameter tree for Linen and NNX (``linen_params``,
  ``load_linen_params``, ``LinenView``).
"""

from funcmod.nn import conv, init, interop, layers, nnx_layers
from funcmod.nn.init import torch_bias_init, torch_kernel_init
from funcmod.nn.interop import LinenView, linen_params, load_linen_params
from funcmod.nn.layers import torch_like_conv2d, torch_like_dense
from funcmod.nn.nnx_layers import torch_like_linear

__all__ = [
    "LinenView",
    "conv",
    "init",
    "interop",
    "layers",
    "linen_params",
    "load_linen_params",
    "nnx_layers",
    "torch_bias_init",
    "torch_kernel_init",
    "torch_like_conv2d",
    "torch_like_dense",
    "torch_like_linear",
]
