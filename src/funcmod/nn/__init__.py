"""Torch-faithful Flax building blocks, torch-free.

* ``funcmod.nn.init``: PyTorch's default initial distributions as Flax initialisers.
* ``funcmod.nn.layers``: Linen ``Dense`` / ``Conv`` built like ``torch.nn.Linear`` / ``Conv2d``.
* ``funcmod.nn.nnx_layers``: the same for Flax NNX.
* ``funcmod.nn.conv``: the convolution those layers run, its CPU lowering chosen per pass by
  shape: ``funcmod.nn.conv_rule`` (the rule, ``Plan``) picks among ``funcmod.nn.conv_lowerings``
  (lax, a direct few-tap sum, a depthwise sum, patches times kernel); ``funcmod.nn.conv_tune``
  measures the plans on this machine instead (``tuned_plans``).
* ``funcmod.nn.interop``: one parameter tree for Linen and NNX (``linen_params``,
  ``load_linen_params``, ``LinenView``).

torch.nn's layers as Linen modules with torch's class names, arguments and channels-first
layouts, Flax's parameter names (what ``funcmod.convert`` gives from the torch layer):

* ``funcmod.nn.linear``: ``Linear``, ``Bilinear``, ``Identity``, ``Flatten``, ``Unflatten``,
  ``Embedding``, ``Dropout``.
* ``funcmod.nn.convolution``: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``pad``.
* ``funcmod.nn.normalization``: ``BatchNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``,
  ``InstanceNorm2d``.
* ``funcmod.nn.activation``: ``ReLU`` ... ``PReLU``, ``Softmax``, ``LogSoftmax``.
* ``funcmod.nn.pooling``: max, average and adaptive pools, ``Upsample``, ``PixelShuffle``.
* ``funcmod.nn.functional``: the functional forms (``relu``, ``pad``, ``interpolate``,
  ``conv2d``, ``cross_entropy``, ...), as ``torch.nn.functional``.
* ``funcmod.nn.recurrent``: ``RNN``, ``LSTM``, ``GRU`` (a ``lax.scan`` per layer and direction).
* ``funcmod.nn.attention``: ``scaled_dot_product_attention``, ``MultiheadAttention``.
* ``funcmod.nn.transformer``: ``TransformerEncoderLayer``, ``TransformerEncoder``,
  ``TransformerDecoderLayer``.
"""

from funcmod.nn import (
    activation,
    attention,
    conv,
    convolution,
    functional,
    init,
    interop,
    layers,
    linear,
    nnx_layers,
    normalization,
    pooling,
    recurrent,
    transformer,
)
from funcmod.nn.activation import (
    ELU,
    GELU,
    Hardsigmoid,
    Hardswish,
    LeakyReLU,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from funcmod.nn.attention import MultiheadAttention, scaled_dot_product_attention
from funcmod.nn.convolution import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from funcmod.nn.init import torch_bias_init, torch_kernel_init
from funcmod.nn.interop import LinenView, linen_params, load_linen_params
from funcmod.nn.layers import torch_like_conv2d, torch_like_dense
from funcmod.nn.linear import Bilinear, Dropout, Embedding, Flatten, Identity, Linear, Unflatten
from funcmod.nn.nnx_layers import torch_like_linear
from funcmod.nn.normalization import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm2d,
    LayerNorm,
    RMSNorm,
)
from funcmod.nn.pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
    PixelShuffle,
    Upsample,
)
from funcmod.nn.recurrent import GRU, LSTM, RNN
from funcmod.nn.transformer import (
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "ELU",
    "GELU",
    "GRU",
    "LSTM",
    "RNN",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "Identity",
    "InstanceNorm2d",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LinenView",
    "LogSoftmax",
    "MaxPool1d",
    "MaxPool2d",
    "Mish",
    "MultiheadAttention",
    "PReLU",
    "PixelShuffle",
    "RMSNorm",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "Unflatten",
    "Upsample",
    "activation",
    "attention",
    "conv",
    "convolution",
    "functional",
    "init",
    "interop",
    "layers",
    "linear",
    "linen_params",
    "load_linen_params",
    "nnx_layers",
    "normalization",
    "pooling",
    "recurrent",
    "scaled_dot_product_attention",
    "torch_bias_init",
    "torch_kernel_init",
    "torch_like_conv2d",
    "torch_like_dense",
    "torch_like_linear",
    "transformer",
]
