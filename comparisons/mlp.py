"""MLP: the PyTorch twin and the Flax port side by side.

linear1, ReLU, linear2: each Dense kernel is the transpose of its Linear weight.

    python comparisons/mlp.py [--steps 20] [--bench-batch 32] [--no-timing]

Prints both classes' sources, the forward and gradient parity in float32 and float64, the parameters
after each of --steps training steps in both frameworks, and the time of one training step in torch
eager and jitted Flax. Exits 1 if a parity check fails. `funcmod show MLP` runs the same; the logic
is in funcmod.tools.show.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["show", "MLP", *sys.argv[1:]]))
