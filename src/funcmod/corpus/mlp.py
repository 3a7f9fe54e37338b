"""A weight-normed MLP in plain PyTorch: linear layers reparametrised by
``torch.nn.utils.parametrizations.weight_norm`` (weight = g * v / ||v|| per output row), GELU,
and a plain linear head. Input (N, in_features) float; output (N, num_classes) logits.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["WeightNormMLP"]


class WeightNormMLP(nn.Module):
    def __init__(self, in_features: int = 16, hidden: int = 32, num_classes: int = 3):
        super().__init__()
        self.fc1 = weight_norm(nn.Linear(in_features, hidden))
        self.act = nn.GELU()
        self.fc2 = weight_norm(nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.out(x)
