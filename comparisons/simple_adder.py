"""SimpleAdder: the PyTorch twin and the Flax port side by side.

x + y with no parameters: parity of the output and of both input gradients.

    python comparisons/simple_adder.py [--bench-batch 32] [--no-timing]

Prints both classes' sources, the forward and gradient parity in float32 and float64, and the
time of one forward pass in torch eager and jitted Flax (there is nothing to train). Exits 1 if
a parity check fails. `funcmod show SimpleAdder` runs the
same; the logic is in funcmod.tools.show.
"""

import sys

from funcmod.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["show", "SimpleAdder", *sys.argv[1:]]))
