"""Flax NNX ports of the seed articles' PyTorch modules, beside the Linen ports in ``models``.

NNX modules are ordinary Python objects that hold their parameters, as ``torch.nn.Module`` does::

    model = MLP(input_size=10, hidden_size=5, output_size=2, rngs=nnx.Rngs(0))
    y = model(x)                        # no init/apply: the weights live on the object
    model.linear1.kernel[...]           # (10, 5): Flax's (in, out) layout, like Linen

Each class has the PyTorch original's name, constructor arguments and attribute names, plus two
keyword arguments: ``rngs`` (where random initial values come from) and ``param_dtype``.
Layers draw from PyTorch's default distributions (``funcmod.nn.init``), images are NHWC and inputs
are checked exactly as the Linen ports check them (``funcmod.layout``).

The explicit state pytree is one call away, and back::

    graphdef, state = nnx.split(model)  # state: {'linear1': {'kernel': Param, 'bias': Param}, ...}
    model = nnx.merge(graphdef, state)  # the same module again, from (structure, arrays)

Names differ from Linen in one place: an element of a list attribute. Linen calls the first layer of
``self.layers = [...]`` ``layers_0``; NNX keeps the list and the index, ``layers/0`` (an ``int``
key). ``funcmod.nn.interop.linen_params`` and ``load_linen_params`` map between the two, so the
weights that ``funcmod.convert.torch_to_flax`` makes for a Linen port load into its NNX port
unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from funcmod.articles.catalog import get_example
from funcmod.layout import (
    check_broadcastable,
    check_channels_last,
    check_last_dim,
    check_real_floating,
)
from funcmod.nn.nnx_layers import torch_like_conv2d, torch_like_linear

__all__ = [
    "MLP",
    "CustomLinear",
    "CustomModule",
    "MultiplyByTwo",
    "RiskyModule",
    "SequentialModel",
    "SimpleAdder",
    "SimpleCNN",
    "SimpleConvNet",
    "SimpleLinear",
    "from_example",
]

Dtype = Any


class SimpleAdder(nnx.Module):
    """Adds two arrays; no parameters. ``rngs`` and ``param_dtype`` are accepted and unused."""

    def __init__(self, *, rngs: nnx.Rngs | None = None, param_dtype: Dtype = jnp.float32):
        pass

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        check_broadcastable("SimpleAdder", [jnp.shape(x), jnp.shape(y)], ["x", "y"])
        return x + y


class CustomLinear(nnx.Module):
    """A linear layer from two raw parameters in PyTorch's layout.

    ``weight`` (out_features, in_features) ~ N(0, 1) like ``torch.randn``; ``bias``
    (out_features,) zeros. Input ``x``: (..., in_features). Returns (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nnx.Param(
            jax.random.normal(rngs.params(), (out_features, in_features), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("CustomLinear", x)
        check_last_dim("CustomLinear", x, self.in_features)
        y = jnp.matmul(x, self.weight[...].T)  # (..., in) @ (in, out) -> (..., out)
        return y + self.bias[...].reshape((1,) * (y.ndim - 1) + (-1,))  # (out,) -> (1, ..., out)


class RiskyModule(nnx.Module):
    """The article's in-place ``x += 1``, done functionally: returns ``x + 1``."""

    def __init__(self, *, rngs: nnx.Rngs | None = None, param_dtype: Dtype = jnp.float32):
        pass

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + 1


class MLP(nnx.Module):
    """``linear1``, ReLU, ``linear2``. Input (..., input_size); returns (..., output_size)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        self.input_size = input_size
        self.linear1 = torch_like_linear(
            input_size, hidden_size, rngs=rngs, param_dtype=param_dtype
        )
        self.relu = nnx.relu
        self.linear2 = torch_like_linear(
            hidden_size, output_size, rngs=rngs, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("MLP", x)
        check_last_dim("MLP", x, self.input_size)
        return self.linear2(self.relu(self.linear1(x)))


class SimpleCNN(nnx.Module):
    """``conv`` (3x3, padding 1) then ReLU. Input NHWC (N, H, W, in_channels); same H, W out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        self.in_channels = in_channels
        self.conv = torch_like_conv2d(
            in_channels, out_channels, 3, padding=1, rngs=rngs, param_dtype=param_dtype
        )
        self.relu = nnx.relu

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleCNN", x)
        check_channels_last("SimpleCNN", x, self.in_channels)
        return self.relu(self.conv(x))


class MultiplyByTwo(nnx.Module):
    """Multiplies its input by a learned scalar ``multiplier`` that starts at 2.0."""

    def __init__(self, *, rngs: nnx.Rngs | None = None, param_dtype: Dtype = jnp.float32):
        self.multiplier = nnx.Param(jnp.asarray(2.0, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.multiplier[...]


class SimpleConvNet(nnx.Module):
    """``conv1`` (3x3, padding 1) then ``relu1``; 3 -> 16 channels by default. NHWC."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 16,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        self.in_channels = in_channels
        self.conv1 = torch_like_conv2d(
            in_channels, out_channels, 3, padding=1, rngs=rngs, param_dtype=param_dtype
        )
        self.relu1 = nnx.relu

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleConvNet", x)
        check_channels_last("SimpleConvNet", x, self.in_channels)
        return self.relu1(self.conv1(x))


class SimpleLinear(nnx.Module):
    """One ``linear`` layer. NNX, like Linen, is called through ``__call__`` by design."""

    def __init__(
        self, input_dim: int, output_dim: int, *, rngs: nnx.Rngs, param_dtype: Dtype = jnp.float32
    ):
        self.input_dim = input_dim
        self.linear = torch_like_linear(input_dim, output_dim, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SimpleLinear", x)
        check_last_dim("SimpleLinear", x, self.input_dim)
        return self.linear(x)


class CustomModule(nnx.Module):
    """``linear2(relu(linear1(x)) @ weight_custom)``, ``weight_custom`` (hidden, hidden) ~ N(0, 1).

    The article's (hidden_dim, output_dim) shape cannot run; see
    ``funcmod.articles.models.CustomModule``. Input (..., input_dim); returns (..., output_dim).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        self.input_dim = input_dim
        self.linear1 = torch_like_linear(input_dim, hidden_dim, rngs=rngs, param_dtype=param_dtype)
        self.linear2 = torch_like_linear(hidden_dim, output_dim, rngs=rngs, param_dtype=param_dtype)
        self.weight_custom = nnx.Param(
            jax.random.normal(rngs.params(), (hidden_dim, hidden_dim), param_dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("CustomModule", x)
        check_last_dim("CustomModule", x, self.input_dim)
        x = nnx.relu(self.linear1(x))
        x = jnp.matmul(x, self.weight_custom[...])  # (..., hidden) @ (hidden, hidden)
        return self.linear2(x)


class SequentialModel(nnx.Sequential):
    """``nnx.Sequential(Linear(10, 20), relu, Linear(20, 5))``, like the twin's ``nn.Sequential``.

    Its state is ``layers/0`` and ``layers/2`` (Linen: ``layers_0``, ``layers_2``; PyTorch:
    ``0``, ``2``). Input (..., input_size); returns (..., output_size).
    """

    def __init__(
        self,
        input_size: int = 10,
        hidden_size: int = 20,
        output_size: int = 5,
        *,
        rngs: nnx.Rngs,
        param_dtype: Dtype = jnp.float32,
    ):
        super().__init__(
            torch_like_linear(input_size, hidden_size, rngs=rngs, param_dtype=param_dtype),
            nnx.relu,
            torch_like_linear(hidden_size, output_size, rngs=rngs, param_dtype=param_dtype),
        )
        self.input_size = input_size

    def __call__(self, x: jax.Array) -> jax.Array:
        check_real_floating("SequentialModel", x)
        check_last_dim("SequentialModel", x, self.input_size)
        return super().__call__(x)


def from_example(example: Any, *, rngs: nnx.Rngs, param_dtype: Dtype = jnp.float32) -> nnx.Module:
    """The NNX port of a seed example (a ``funcmod.articles.catalog.Example`` or its name), built
    with the example's constructor arguments."""
    ex = get_example(example)
    return globals()[ex.name](**ex.kwargs, rngs=rngs, param_dtype=param_dtype)
