"""Train the MLP port and its PyTorch twin on scikit-learn's digits, side by side.

    python examples/digits_mlp.py [--epochs 20] [--hidden 64] [--workdir results]

Both start from the same weights and see the same batches (torch.optim.Adam against its optax
translation); prints both test accuracies and the final parameter error between the two runs, and
writes results/digits_mlp_loss.png with the two loss curves. The code is in funcmod.articles.digits;
`funcmod digits mlp` runs the same.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["digits", "mlp", *sys.argv[1:]]))
