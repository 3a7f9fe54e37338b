"""Recurrent sequence classifiers in plain PyTorch.

* ``LSTMClassifier``: float features (N, T, features), a 2-layer bidirectional ``batch_first``
  ``nn.LSTM``; the last layer's final hidden states of both directions, concatenated, feed a
  linear head.
* ``GRUClassifier``: token ids (N, T) int64, an embedding, a 2-layer bidirectional
  ``batch_first`` ``nn.GRU``; the outputs averaged over time, dropout, a linear head.

Both return logits (N, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GRUClassifier", "LSTMClassifier"]


class LSTMClassifier(nn.Module):
    def __init__(
        self,
        input_size: int = 8,
        hidden_size: int = 16,
        num_classes: int = 5,
        num_layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout,
        )
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)  # h_n: (num_layers * 2, N, hidden)
        hidden = torch.cat((h_n[-2], h_n[-1]), dim=1)  # last layer, forward and backward
        return self.fc(hidden)


class GRUClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int = 50,
        embed_dim: int = 12,
        hidden_size: int = 16,
        num_classes: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.gru = nn.GRU(
            embed_dim, hidden_size, num_layers=2, batch_first=True, bidirectional=True
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, tokens):
        embedded = self.embedding(tokens)  # (N, T, embed_dim)
        outputs, _ = self.gru(embedded)  # (N, T, 2 * hidden)
        pooled = outputs.mean(dim=1)  # (N, 2 * hidden)
        return self.fc(self.dropout(pooled))
