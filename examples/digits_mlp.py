"""Train the MLP port and its PyTorch twin on scikit-learn's digits, side by side.

    python examples/digits_mlp.py [--epochs 20] [--workdir results]

Both start from the same weights and see the same batches; prints both test accuracies and the
final parameter error between the runs, and writes results/digits_mlp_loss.png.
"""

from __future__ import annotations

import argparse
import json

from funcmod.digits import DigitsConfig, train_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="results")
    args = parser.parse_args()
    config = DigitsConfig(model="mlp", hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    result = train_and_evaluate(config, args.workdir)
    summary = {k: v for k, v in result.items() if not k.endswith("_losses")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
