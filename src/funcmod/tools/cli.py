"""The ``funcmod`` command line: one entry point, one subcommand per tool.

    funcmod compare [NAME ...]      parity of the seed examples, twin vs port (table or --json)
    funcmod show NAME               one example side by side: sources, parity, training, timing
    funcmod trajectory              every trainable example x optimizer x dtype, whole runs
    funcmod bench                   a training step timed in Flax and torch
    funcmod distributed parity      1 device vs every local device, per example
    funcmod distributed train       one data-parallel run (one of several processes)
    funcmod digits {mlp,cnn}        train on scikit-learn's digits in both frameworks
    funcmod charts                  the site's charts, drawn from the tools' JSON
    funcmod gallery [--check]       docs/gallery: the ported source of every corpus model
    funcmod port FILE.py:FACTORY    a torch model as Flax source, weights and parity table

Each tool module registers its subcommand with ``add_parser(subparsers)`` and gives it a
``run(args) -> int``; ``main(argv)`` parses and returns that exit status (2 for bad arguments,
from argparse, before any work is done).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from funcmod.tools import charts, compare, digits, distributed, gallery, port, show, trajectory
from funcmod.tools.bench import command as bench

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``funcmod`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="funcmod", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for tool in (compare, show, trajectory, bench, distributed, digits, charts, gallery, port):
        tool.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``funcmod`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on bad arguments
        return int(e.code or 0)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
