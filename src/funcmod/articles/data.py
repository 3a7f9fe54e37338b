"""Scikit-learn's bundled digits data set (1797 8x8 grey images, 10 classes), ready for both
frameworks. It ships with scikit-learn, so nothing is downloaded."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Digits", "batches", "load_digits"]


class Digits(NamedTuple):
    """Train and test split. Images are float32 in [0, 1], labels int32 in [0, 10).

    ``x_train``: (n_train, 64) flat, or (n_train, 1, 8, 8) NCHW with ``images=True``.
    ``y_train``: (n_train,). Likewise ``x_test``, ``y_test``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(*, images: bool = False, test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """The digits, shuffled with ``seed`` and split; the same seed gives the same split.

    Args:
      images: return NCHW images (N, 1, 8, 8) instead of flat (N, 64) vectors.
      test_fraction: the share of samples held out for testing.
      seed: seeds the shuffle.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data needs scikit-learn: pip install 'funcmod[examples]'"
        ) from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = sk_load_digits()
    x = (data.data / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = data.target.astype(np.int32)  # JAX's default integer is int32
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    if images:
        x = x.reshape(-1, 1, 8, 8)  # (N, 64) -> (N, C=1, H=8, W=8)
    n_test = round(len(x) * test_fraction)
    return Digits(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, epochs: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled mini-batches stacked for ``lax.scan``: the last partial batch of each epoch is
    dropped so every batch has the same shape.

    Returns:
      ``(xb, yb)`` with shapes (steps, batch_size, *x.shape[1:]) and (steps, batch_size), where
      steps = epochs * (len(x) // batch_size).
    """
    if batch_size < 1 or batch_size > len(x):
        raise ValueError(f"batch_size must be in [1, {len(x)}], got {batch_size}")
    rng = np.random.default_rng(seed)
    per_epoch = len(x) // batch_size
    idx = np.concatenate(
        [rng.permutation(len(x))[: per_epoch * batch_size] for _ in range(epochs)]
    ).reshape(epochs * per_epoch, batch_size)  # (steps * batch,) -> (steps, batch)
    return x[idx], y[idx]
