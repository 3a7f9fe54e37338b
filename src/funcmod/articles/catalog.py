"""The seed examples, one entry each: how to build the Flax port and the PyTorch twin with the
same constructor arguments, and what inputs they take.

Each entry is keyed by the class name it has in ``funcmod.articles.models`` and
``funcmod.articles.torch_models`` (and in ``comparisons/`` and the docs), so one name finds
everything about an example. This module imports without torch; ``Example.torch_module`` imports it
when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import funcmod.articles.models as models
from funcmod.layout import inputs_to_channels_last

__all__ = ["EXAMPLES", "Example", "get_example"]


@dataclass(frozen=True)
class Example:
    """One seed example.

    Attributes:
      name: the class name in ``funcmod.articles.models`` and ``funcmod.articles.torch_models``.
      article: the seed article it comes from.
      kwargs: constructor arguments, the same for the port and the twin.
      input_shapes: shapes of the inputs for a batch of one, in PyTorch's layout, without the
        batch axis: ``((10,),)`` for a vector input, ``((3, 32, 32),)`` for a CHW image.
      input_layouts: per input, ``'NCHW'`` for an image (the port takes NHWC) or None.
      input_names: the forward pass's argument names, used to label input gradients.
      output_layout: ``'NCHW'`` when the output is an image, else None.
      trainable: whether the example has parameters to train.
    """

    name: str
    article: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    input_shapes: tuple[tuple[int, ...], ...] = ((10,),)
    input_layouts: tuple[str | None, ...] = (None,)
    output_layout: str | None = None
    trainable: bool = True
    input_names: tuple[str, ...] = ("x",)

    def flax_module(self, param_dtype: Any = jnp.float32) -> nn.Module:
        """The Flax port, with parameters of ``param_dtype``."""
        cls = getattr(models, self.name)
        kwargs = dict(self.kwargs)
        if "param_dtype" in {f.name for f in dataclasses.fields(cls)}:
            kwargs["param_dtype"] = param_dtype
        return cls(**kwargs)

    def torch_module(self, dtype: Any = np.float32):
        """The PyTorch twin, in ``dtype``: ``np.float32``/``np.float64`` or a torch dtype."""
        import torch

        import funcmod.articles.torch_models as torch_models

        if not isinstance(dtype, torch.dtype):
            np_dtype = np.dtype(dtype)
            if np_dtype not in (np.float32, np.float64):
                raise ValueError(f"{self.name}: dtype must be float32 or float64, got {np_dtype}")
            dtype = getattr(torch, np_dtype.name)
        module = getattr(torch_models, self.name)(**self.kwargs)
        return module.to(dtype)

    def port_inputs(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        """Inputs in PyTorch's layout (``make_inputs``) moved to the port's: images NHWC."""
        return inputs_to_channels_last(inputs, self.input_layouts)

    def make_inputs(
        self,
        rng: np.random.Generator,
        batch: int,
        dtype: Any = np.float32,
        image_size: int | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Standard-normal inputs in PyTorch's layout, with a leading batch axis.

        ``image_size`` replaces the height and width of image inputs (to keep tests small).
        """
        arrays = []
        for shape, layout in zip(self.input_shapes, self.input_layouts, strict=True):
            if layout is not None and image_size is not None:
                shape = (shape[0], image_size, image_size)  # (C, H, W)
            arrays.append(rng.standard_normal((batch, *shape)).astype(dtype))
        return tuple(arrays)


_A0 = "Can PyTorch tensor methods be used within nn.Modules?"
_A1 = "Why do PyTorch Tensor methods to nn.Modules?"
_A2 = "Why does a Pytorch Tensor methods to nn.Modules?"
_A3 = "How does PyTorch's nn.Module class function internally?"

EXAMPLES: dict[str, Example] = {
    e.name: e
    for e in [
        Example(
            "SimpleAdder",
            _A0,
            input_shapes=((2,), (2,)),
            input_layouts=(None, None),
            input_names=("x", "y"),
            trainable=False,
        ),
        Example("CustomLinear", _A0, {"in_features": 2, "out_features": 3}, ((2,),)),
        Example("RiskyModule", _A0, input_shapes=((2,),), trainable=False),
        Example("MLP", _A1, {"input_size": 10, "hidden_size": 5, "output_size": 2}),
        Example(
            "SimpleCNN",
            _A1,
            {"in_channels": 3, "out_channels": 16},
            ((3, 32, 32),),
            ("NCHW",),
            "NCHW",
        ),
        Example("MultiplyByTwo", _A1, input_shapes=((3,),)),
        Example("SimpleConvNet", _A2, {}, ((3, 64, 64),), ("NCHW",), "NCHW"),
        Example("SimpleLinear", _A3, {"input_dim": 10, "output_dim": 5}),
        Example("CustomModule", _A3, {"input_dim": 10, "hidden_dim": 20, "output_dim": 5}),
        Example("SequentialModel", _A3, {"input_size": 10, "hidden_size": 20, "output_size": 5}),
    ]
}


def get_example(example: str | Example) -> Example:
    """The catalog entry for ``example``: an ``Example`` is returned as it is, a name is looked up.

    Raises:
      ValueError: the name is not in ``EXAMPLES``; the message lists the names that are.
    """
    if isinstance(example, Example):
        return example
    try:
        return EXAMPLES[example]
    except KeyError:
        names = list(EXAMPLES)
        raise ValueError(f"no seed example named {example!r}; expected one of {names}") from None
