"""SimpleConvNet: the PyTorch twin and the Flax port side by side.

conv1 (3 -> 16, 3x3, padding 1) and ReLU on 3x64x64 images.

    python comparisons/simple_conv_net.py [--steps 20] [--bench-batch 32] [--no-timing]

Prints both classes' sources, the forward and gradient parity in float32 and float64, the parameters
after each of --steps training steps in both frameworks, and the time of one training step in torch
eager and jitted Flax. Exits 1 if a parity check fails. `funcmod show SimpleConvNet` runs the same;
the logic is in funcmod.tools.show.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["show", "SimpleConvNet", *sys.argv[1:]]))
