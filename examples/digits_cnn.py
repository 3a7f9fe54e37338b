"""Train the CNN port and its PyTorch twin on scikit-learn's digits, side by side.

The model is DigitsCNN: SimpleCNN(1, 16) on 1x8x8 images, then a linear head.

    python examples/digits_cnn.py [--epochs 20] [--hidden 16] [--workdir results]

Both start from the same weights and see the same batches (torch.optim.Adam against its optax
translation); prints both test accuracies and the final parameter error between the two runs, and
writes results/digits_cnn_loss.png with the two loss curves. The code is in funcmod.articles.digits;
`funcmod digits cnn` runs the same.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["digits", "cnn", *sys.argv[1:]]))
