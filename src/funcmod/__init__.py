"""funcmod: PyTorch's nn.Module examples the functional way, in JAX and Flax.

Torch-free modules are imported here. ``funcmod.torch_models``, ``funcmod.convert``,
``funcmod.parity``, ``funcmod.trajectory`` and ``funcmod.optim.from_torch`` need torch and are
imported explicitly::

    from funcmod import models, torch_models
    from funcmod.convert import torch_to_flax, flax_to_torch

Modules: ``models`` (Flax Linen ports), ``nnx_models`` (Flax NNX ports), ``torch_models``
(PyTorch twins), ``catalog`` (the examples by name), ``convert`` (weights both ways), ``parity``
(outputs and gradients), ``trajectory`` (whole training runs), ``train`` (jitted optax steps),
``optim`` (torch.optim -> optax), ``checkpoint`` (atomic TrainState files), ``init`` (PyTorch's
default initialisers), ``data`` (the digits), ``tree`` (per-leaf comparison).
"""

from funcmod import catalog, checkpoint, init, layout, models, train, tree
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
    "checkpoint",
    "compare_trees",
    "count_params",
    "init",
    "layout",
    "models",
    "train",
    "tree",
]
