"""funcmod: PyTorch's nn.Module examples the functional way, in JAX and Flax.

Torch-free modules are imported here; ``funcmod.torch_models``, ``funcmod.convert`` and
``funcmod.parity`` need torch and are imported explicitly::

    from funcmod import models, torch_models
    from funcmod.convert import torch_to_flax, flax_to_torch
"""

from funcmod import catalog, init, layout, models, tree
from funcmod.catalog import EXAMPLES, Example
from funcmod.tree import LeafDiff, assert_trees_close, compare_trees, count_params

__version__ = "0.1.0"

__all__ = [
    "EXAMPLES",
    "Example",
    "LeafDiff",
    "__version__",
    "assert_trees_close",
    "catalog",
    "compare_trees",
    "count_params",
    "init",
    "layout",
    "models",
    "tree",
]
