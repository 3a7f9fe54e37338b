"""PyTorch twins of the Flax ports in ``funcmod.articles.models``: same class names, constructor
arguments and attribute names, written from the seed articles' descriptions with their mistakes
fixed.

This is the only ``funcmod`` module (with ``convert`` and ``parity``) that needs torch.
Images are NCHW here, as PyTorch expects.
"""

from __future__ import annotations

import torch
from torch import nn

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


class SimpleAdder(nn.Module):
    """Returns ``x + y``; no parameters."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class CustomLinear(nn.Module):
    """A linear layer from two ``nn.Parameter``s: weight (out, in) ~ N(0, 1), bias zeros."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight.T) + self.bias


class RiskyModule(nn.Module):
    """Adds one, out of place.

    The article's version does ``x += 1`` on its input. That mutates the caller's tensor, and
    when the input is a leaf that requires grad it raises ``RuntimeError`` before any backward
    pass. Out of place, the gradient is the identity, as in the Flax port.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class MLP(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.relu(self.linear1(x)))


class SimpleCNN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class MultiplyByTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.multiplier = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.multiplier


class SimpleConvNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.conv1(x))


class SimpleLinear(nn.Module):
    """Wraps one ``nn.Linear``. Defines ``forward``, not ``__call__``, so hooks still run."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class CustomModule(nn.Module):
    """``linear2(relu(linear1(x)) @ weight_custom)`` with ``weight_custom`` (hidden, hidden).

    The article registers ``weight_custom`` as (hidden_dim, output_dim), which makes the
    forward pass fail with a shape error whenever output_dim != hidden_dim.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, output_dim)
        self.register_parameter("weight_custom", nn.Parameter(torch.randn(hidden_dim, hidden_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear1(x))
        x = torch.matmul(x, self.weight_custom)
        return self.linear2(x)


class SequentialModel(nn.Sequential):
    """``nn.Sequential(Linear(10, 20), ReLU(), Linear(20, 5))``, with the sizes as arguments."""

    def __init__(self, input_size: int = 10, hidden_size: int = 20, output_size: int = 5):
        super().__init__(
            nn.Linear(input_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, output_size),
        )


class DigitsCNN(nn.Module):
    """``SimpleCNN`` with a linear classifier on top, for 8x8 digits (not a seed example)."""

    def __init__(
        self, in_channels: int = 1, channels: int = 16, image_size: int = 8, classes: int = 10
    ):
        super().__init__()
        self.cnn = SimpleCNN(in_channels, channels)
        self.head = nn.Linear(channels * image_size * image_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cnn(x)  # (N, C, H, W)
        return self.head(h.flatten(1))  # (N, C*H*W)
