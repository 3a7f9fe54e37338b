"""MultiplyByTwo: the PyTorch twin and the Flax port side by side.

A learned scalar multiplier, initialised to 2.0.

    python comparisons/multiply_by_two.py [--steps 20] [--bench-batch 32] [--no-timing]

Prints both classes' sources, the forward and gradient parity in float32 and float64, the parameters
after each of --steps training steps in both frameworks, and the time of one training step in torch
eager and jitted Flax. Exits 1 if a parity check fails. `funcmod show MultiplyByTwo` runs the same;
the logic is in funcmod.tools.show.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["show", "MultiplyByTwo", *sys.argv[1:]]))
