"""Flax Linen ports of the seed articles' PyTorch modules.

Each class has the PyTorch original's name, constructor arguments and attribute names, so that
``model.linear1.weight`` in PyTorch is ``variables['params']['linear1']['kernel']`` here (the
transpose of it: Flax stores a Dense kernel as (in, out)). Parameters live in an explicit
pytree::

    model = MLP(input_size=10, hidden_size=5, output_size=2)
    variables = model.init(jax.random.key(0), x)   # {'params': {'linear1': {...}, ...}}
    y = model.apply(variables, x)

Images are channels-last (NHWC), Flax's convention; the PyTorch twins take NCHW. The ports with
Linear or Conv layers take real floating inputs only and raise ValueError naming any other dtype
(complex, integer), as their twins raise; the elementwise ones (``SimpleAdder``, ``RiskyModule``,
``MultiplyByTwo``) compute in the input's dtype, as their twins do.
Layers are initialised from PyTorch's default distributions (``funcmod.nn.init``), so a freshly
initialised port trains like the original. ``param_dtype`` sets the parameters' dtype (use
``jnp.float64`` with ``jax_enable_x64`` for float64 runs).

The PyTorch twins are in ``funcmod.articles.torch_models``; ``funcmod.convert`` moves weights
between them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from funcmod.layout import (
    check_broadcastable,
    check_channels_last,
    check_last_dim,
    check_real_floating,
)
from funcmod.nn.layers import torch_like_conv2d, torch_like_dense

__all__ = [
    "MLP",
    "CustomLinear",
    "CustomModule",
    "DigitsCNN",
    "MultiplyByTwo",
    "RiskyModule",
    "SequentialModel",
    "SimpleAdder",
    "SimpleCNN",
    "SimpleConvNet",
    "SimpleLinear",
]

Dtype = Any


class SimpleAdder(nn.Module):
    """Adds two arrays; it has no parameters.

    Inputs: ``x`` and ``y`` of shapes that broadcast together. Returns ``x + y``.
    """

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        check_broadcastable("SimpleAdder", [jnp.shape(x), jnp.shape(y)], ["x", "y"])
        return x + y


class CustomLinear(nn.Module):
    """A linear layer written with raw parameters, like the article's ``nn.Parameter`` version.

    The parameters keep PyTorch's layout and names: ``weight`` (out_features, in_features),
    drawn from N(0, 1) as ``torch.randn`` does, and ``bias`` (out_features,), zeros.

    Input ``x``: (..., in_features). Returns (..., out_features).
    """

    in_features: int
    out_features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("CustomLinear", x)
        check_last_dim("CustomLinear", x, self.in_features)
        weight = self.param(
            "weight",
            nn.initializers.normal(stddev=1.0),
            (self.out_features, self.in_features),
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.out_features,), self.param_dtype)
        y = jnp.matmul(x, weight.T)  # (..., in) @ (in, out) -> (..., out)
        return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))  # (out,) -> (1, ..., out)


class RiskyModule(nn.Module):
    """The functional form of the article's in-place ``x += 1``: returns ``x + 1``.

    JAX arrays are immutable, so there is no in-place add to get wrong: the input is never
    modified and its gradient is the identity. (In PyTorch the in-place version raises a
    RuntimeError when ``x`` is a leaf that requires grad; ``docs/claims.md`` has the details.)
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x + 1


class MLP(nn.Module):
    """Two linear layers with a ReLU between them.

    Input ``x``: (..., input_size). Returns (..., output_size).
    """

    input_size: int
    hidden_size: int
    output_size: int
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.linear1 = torch_like_dense(self.input_size, self.hidden_size, self.param_dtype)
        self.relu = nn.relu
        self.linear2 = torch_like_dense(self.hidden_size, self.output_size, self.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("MLP", x)
        check_last_dim("MLP", x, self.input_size)
        x = self.linear1(x)
        x = self.relu(x)
        return self.linear2(x)


class SimpleCNN(nn.Module):
    """A 3x3 convolution (padding 1, so the image size is kept) followed by a ReLU.

    Input ``x``: (N, H, W, in_channels), NHWC. Returns (N, H, W, out_channels).
    """

    in_channels: int
    out_channels: int
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.conv = torch_like_conv2d(
            self.in_channels, self.out_channels, 3, padding=1, param_dtype=self.param_dtype
        )
        self.relu = nn.relu

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleCNN", x)
        check_channels_last("SimpleCNN", x, self.in_channels)
        return self.relu(self.conv(x))


class MultiplyByTwo(nn.Module):
    """Multiplies its input by a learned scalar ``multiplier``, initialised to 2.0.

    Input ``x``: any shape. Returns an array of the same shape.
    """

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        multiplier = self.param("multiplier", nn.initializers.constant(2.0), (), self.param_dtype)
        return x * multiplier


class SimpleConvNet(nn.Module):
    """``conv1`` (3x3, padding 1) then ReLU: the article's net whose parameters are averaged.

    The article builds it without arguments (3 -> 16 channels); the channel counts are
    arguments here with those defaults, so the same net can take 1-channel digits.

    Input ``x``: (N, H, W, in_channels), NHWC. Returns (N, H, W, out_channels).
    """

    in_channels: int = 3
    out_channels: int = 16
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.conv1 = torch_like_conv2d(
            self.in_channels, self.out_channels, 3, padding=1, param_dtype=self.param_dtype
        )
        self.relu1 = nn.relu

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleConvNet", x)
        check_channels_last("SimpleConvNet", x, self.in_channels)
        return self.relu1(self.conv1(x))


class SimpleLinear(nn.Module):
    """A wrapper around one linear layer.

    The article overrides ``__call__`` in its PyTorch version, which skips PyTorch's hooks; the
    twin defines ``forward``. Flax modules are called through ``__call__`` by design.

    Input ``x``: (..., input_dim). Returns (..., output_dim).
    """

    input_dim: int
    output_dim: int
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.linear = torch_like_dense(self.input_dim, self.output_dim, self.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleLinear", x)
        check_last_dim("SimpleLinear", x, self.input_dim)
        return self.linear(x)


class CustomModule(nn.Module):
    """Two linear layers around a parameter registered by hand, ``weight_custom``.

    Computes ``linear2(relu(linear1(x)) @ weight_custom)``. The article registers
    ``weight_custom`` with shape (hidden_dim, output_dim), which cannot work: the product has
    output_dim features but ``linear2`` expects hidden_dim (with the article's 10, 20, 5 it
    raises a shape error). Here, and in the twin, ``weight_custom`` is (hidden_dim, hidden_dim),
    drawn from N(0, 1) like ``torch.randn``.

    Input ``x``: (..., input_dim). Returns (..., output_dim).
    """

    input_dim: int
    hidden_dim: int
    output_dim: int
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.linear1 = torch_like_dense(self.input_dim, self.hidden_dim, self.param_dtype)
        self.linear2 = torch_like_dense(self.hidden_dim, self.output_dim, self.param_dtype)
        self.weight_custom = self.param(
            "weight_custom",
            nn.initializers.normal(stddev=1.0),
            (self.hidden_dim, self.hidden_dim),
            self.param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("CustomModule", x)
        check_last_dim("CustomModule", x, self.input_dim)
        x = nn.relu(self.linear1(x))
        x = jnp.matmul(x, self.weight_custom)  # (..., hidden) @ (hidden, hidden)
        return self.linear2(x)


class SequentialModel(nn.Module):
    """The article's ``nn.Sequential(Linear(10, 20), ReLU(), Linear(20, 5))``.

    The layers are a list named ``layers``, so Flax names them ``layers_0`` and ``layers_2``
    (the ReLU at index 1 has no parameters), as ``flax.linen.Sequential`` does; PyTorch's
    ``nn.Sequential`` names them ``0`` and ``2``.

    Input ``x``: (..., input_size). Returns (..., output_size).
    """

    input_size: int = 10
    hidden_size: int = 20
    output_size: int = 5
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.layers = [
            torch_like_dense(self.input_size, self.hidden_size, self.param_dtype),
            nn.relu,
            torch_like_dense(self.hidden_size, self.output_size, self.param_dtype),
        ]

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SequentialModel", x)
        check_last_dim("SequentialModel", x, self.input_size)
        for layer in self.layers:
            x = layer(x)
        return x


class DigitsCNN(nn.Module):
    """``SimpleCNN`` with a linear classifier on top, for 8x8 digits (not a seed example).

    ``cnn`` is a ``SimpleCNN(in_channels, channels)``; ``head`` maps its flattened feature map
    to ``classes`` logits. The feature map is put back in PyTorch's channel-first order before it
    is flattened, so ``head``'s kernel is the transpose of the twin's ``head.weight``: flattening
    NHWC directly would order the features differently and the weights would not carry over.

    Input ``x``: (N, image_size, image_size, in_channels), NHWC, N >= 0. Returns (N, classes).
    """

    in_channels: int = 1
    channels: int = 16
    image_size: int = 8
    classes: int = 10
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.cnn = SimpleCNN(self.in_channels, self.channels, param_dtype=self.param_dtype)
        features = self.channels * self.image_size * self.image_size
        self.head = torch_like_dense(features, self.classes, self.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("DigitsCNN", x)
        check_channels_last("DigitsCNN", x, self.in_channels)
        size = self.image_size
        if tuple(x.shape[1:3]) != (size, size):  # ``head`` is sized for image_size x image_size
            raise ValueError(
                f"DigitsCNN: expected {size}x{size} images, x of shape (N, {size}, {size}, "
                f"{self.in_channels}), got shape {tuple(x.shape)}; build it with "
                "image_size=... for other sizes"
            )
        h = self.cnn(x)  # (N, H, W, C)
        h = jnp.transpose(h, (0, 3, 1, 2))  # NHWC -> NCHW, PyTorch's flatten order
        # (N, C, H, W) -> (N, C*H*W); the size is explicit, as -1 cannot be inferred for N = 0
        return self.head(h.reshape(h.shape[0], self.channels * size * size))
