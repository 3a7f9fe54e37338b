"""``funcmod digits {mlp,cnn}``: train a port and its PyTorch twin on scikit-learn's digits from
the same weights (``funcmod.articles.digits.train_and_evaluate``) and print a summary."""

from __future__ import annotations

import argparse
import json
from typing import Any

from funcmod.tools.args import nonnegative_int, positive_int

__all__ = ["add_parser", "run"]

# The hidden size (MLP) or channel count (CNN) each model trains with by default.
DEFAULT_HIDDEN = {"mlp": 64, "cnn": 16}


def add_parser(subparsers: Any) -> None:
    """Register ``digits`` on the ``funcmod`` command line."""
    p = subparsers.add_parser(
        "digits", help="train a port and its twin on the digits, side by side"
    )
    p.add_argument("model", choices=list(DEFAULT_HIDDEN), help="mlp or cnn")
    # Defaults (None here) are DigitsConfig's.
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--hidden", type=positive_int, help="hidden size / channels (64 / 16)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--workdir", default="results", help="where the JSON and the PNG go")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train, print the summary as JSON, write the loss curves; exit 0."""
    from funcmod.articles.digits import DigitsConfig, train_and_evaluate

    given = {
        "hidden": DEFAULT_HIDDEN[args.model] if args.hidden is None else args.hidden,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }
    config = DigitsConfig(model=args.model, **{k: v for k, v in given.items() if v is not None})
    result = train_and_evaluate(config, args.workdir)
    summary = {k: v for k, v in result.items() if not k.endswith("_losses")}
    print(json.dumps(summary, indent=2))
    return 0
