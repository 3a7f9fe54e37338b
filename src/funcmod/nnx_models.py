"""Flax NNX ports of the seed articles' PyTorch modules, beside the Linen ports in ``models``.

NNX modules are ordinary Python objects that hold their parameters, as ``torch.nn.Module`` does::

    model = MLP(input_size=10, hidden_size=5, output_size=2, rngs=nnx.Rngs(0))
    y = model(x)                        # no init/apply: the weights live on the object
    model.linear1.kernel[...]           # (10, 5): Flax's (in, out) layout, like Linen

Each class has the PyTorch original's name, constructor arguments and attribute names, plus two
keyword arguments: ``rngs`` (where random initial values come from) and ``param_dtype``.
Layers draw from PyTorch's default distributions (``funcmod.init``), images are NHWC and inputs
are checked exactly as the Linen ports check them (``funcmod._checks``).

The explicit state pytree is one call away, and back::

    graphdef, state = nnx.split(model)  # state: {'linear1': {'kernel': Param, 'bias': Param}, ...}
    model = nnx.merge(graphdef, state)  # the same module again, from (structure, arrays)

Names differ from Linen in one place: an element of a list attribute. Linen calls the first
layer of ``self.layers = [...]`` ``layers_0``; NNX keeps the list and the index, ``layers/0``
(an ``int`` key). ``linen_params`` and ``load_linen_params`` map between the two, so the weights
that ``funcmod.convert.torch_to_flax`` makes for a Linen port load into its NNX port unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from funcmod._checks import check_broadcastable, check_channels_last, check_last_dim
from funcmod.init import torch_bias_init, torch_kernel_init

__all__ = [
    "MLP",
    "CustomLinear",
    "CustomModule",
    "LinenView",
    "MultiplyByTwo",
    "RiskyModule",
    "SequentialModel",
    "SimpleAdder",
    "SimpleCNN",
    "SimpleConvNet",
    "SimpleLinear",
    "from_example",
    "linen_params",
    "load_linen_params",
    "torch_like_conv2d",
    "torch_like_linear",
]

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
        check_last_dim("SimpleLinear", x, self.input_dim)
        return self.linear(x)


class CustomModule(nnx.Module):
    """``linear2(relu(linear1(x)) @ weight_custom)``, ``weight_custom`` (hidden, hidden) ~ N(0, 1).

    The article's (hidden_dim, output_dim) shape cannot run; see ``funcmod.models.CustomModule``.
    Input (..., input_dim); returns (..., output_dim).
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
        check_last_dim("SequentialModel", x, self.input_size)
        return super().__call__(x)


def from_example(example: Any, *, rngs: nnx.Rngs, param_dtype: Dtype = jnp.float32) -> nnx.Module:
    """The NNX port of a seed example (a ``funcmod.catalog.Example`` or its name), built with the
    example's constructor arguments."""
    from funcmod.catalog import EXAMPLES

    ex = EXAMPLES[example] if isinstance(example, str) else example
    return globals()[ex.name](**ex.kwargs, rngs=rngs, param_dtype=param_dtype)


# --- Linen names <-> NNX state -------------------------------------------------------------------


def _linen_path(nnx_path: tuple[Any, ...]) -> tuple[str, ...]:
    """``('layers', 0, 'kernel')`` -> ``('layers_0', 'kernel')``: an int key is a list index,
    which Linen appends to the list attribute's name."""
    out: list[str] = []
    for key in nnx_path:
        if isinstance(key, int) and out:
            out[-1] = f"{out[-1]}_{key}"
        else:
            out.append(str(key))
    return tuple(out)


def _param_leaves(
    model: nnx.Module | nnx.State,
) -> tuple[list[tuple[tuple[Any, ...], Any]], Any]:
    """The ``nnx.Param`` arrays of a model (or the arrays of a state, such as the gradients
    ``nnx.grad`` returns) with their NNX paths, and the state's tree structure."""
    state = nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else model
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    # Every leaf path ends in GetAttrKey('value') (the array inside the Param); drop it.
    leaves = [(tuple(k.key for k in p if isinstance(k, jax.tree_util.DictKey)), v) for p, v in flat]
    return leaves, treedef


def linen_params(model: nnx.Module | nnx.State) -> dict[str, Any]:
    """The model's parameters as the Linen port names them: ``{'linear1': {'kernel': ...}}``.

    Also takes a state of the same structure, for example the gradient ``nnx.grad`` returns
    for the model. Wrap it as ``{'params': linen_params(model)}`` to get Linen variables.
    """
    leaves, _ = _param_leaves(model)
    return traverse_util.unflatten_dict({_linen_path(p): v for p, v in leaves})


def _nnx_state_from_linen(model: nnx.Module, params: Mapping[str, Any]) -> nnx.State:
    """A ``nnx.Param`` state for ``model`` holding the Linen-named ``params``, checked strictly."""
    leaves, treedef = _param_leaves(model)
    given = traverse_util.flatten_dict(dict(params))
    wanted = {_linen_path(p): v for p, v in leaves}
    missing = sorted("/".join(k) for k in wanted.keys() - given.keys())
    unexpected = sorted("/".join(k) for k in given.keys() - wanted.keys())
    mismatched = [
        f"{'/'.join(k)}: expected {np.shape(v)} {np.dtype(v.dtype).name}, "
        f"got {np.shape(given[k])} {np.dtype(given[k].dtype).name}"
        for k, v in wanted.items()
        if k in given
        and (np.shape(given[k]) != np.shape(v) or np.dtype(given[k].dtype) != np.dtype(v.dtype))
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"params do not fit {type(model).__name__}: missing {missing}, "
            f"unexpected {unexpected}, mismatched {mismatched}"
        )
    return jax.tree_util.tree_unflatten(treedef, [given[_linen_path(p)] for p, _ in leaves])


def load_linen_params(model: nnx.Module, params: Mapping[str, Any]) -> None:
    """Write Linen-named parameters (``variables['params']`` of the Linen port, or of
    ``torch_to_flax(twin)``) into the NNX model, in place.

    Raises:
      ValueError: naming every missing and unexpected key and every leaf whose shape or dtype
        does not fit; nothing is written then.
    """
    nnx.update(model, _nnx_state_from_linen(model, params))


class LinenView:
    """An NNX model seen through Linen's functional interface: ``view.apply(variables, *xs)``.

    ``variables['params']`` uses the Linen names. The model itself is not modified: each call
    merges a fresh copy from the model's graph definition and the given arrays, so ``jax.grad``
    with respect to ``variables`` works, and code written for a Linen port (for example
    ``funcmod.parity.check_parity``) runs the NNX model unchanged. State other than parameters
    (batch statistics, say) is taken as it was when the view was made.
    """

    def __init__(self, model: nnx.Module):
        self.model = model
        self._graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)

    def apply(self, variables: Mapping[str, Any], *args: Any) -> Any:
        params = _nnx_state_from_linen(self.model, variables.get("params", {}))
        return nnx.merge(self._graphdef, params, self._rest)(*args)
