"""Argument types the ``funcmod`` subcommands share: argparse rejects a bad value with exit
status 2 and a message naming the flag, before any work is done."""

from __future__ import annotations

import argparse

__all__ = ["nonnegative_int", "positive_int"]


def positive_int(text: str) -> int:
    """An int >= 1 (a batch size, a number of rounds)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0 (a seed, a number of steps where 0 means none)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
