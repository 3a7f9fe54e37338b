"""funcmod: PyTorch's nn.Module concepts the functional way, in JAX and Flax, with proof that a
port computes the same numbers as its PyTorch original.

The package is in three wings; arrows point one way, tools -> articles -> library:

* the library (what a user's own port imports):
  ``tree`` (the per-leaf comparison), ``layout`` (NCHW <-> NHWC, input checks), ``precision``
  (dtypes, the tolerance table, float64 on demand), ``nn`` (torch-faithful Flax building
  blocks), ``convert`` (weights both ways; its walk ``convert_walk``, several-tensor
  rules ``convert_groups``, torch-named safetensors files ``convert_files``), ``parity``
  (outputs and gradients), ``trajectory`` (whole training runs), ``train`` (jitted optax
  steps), ``bound_step`` (the step holding its state), ``host_memory`` (freed memory kept
  for XLA:CPU's next step), ``timing`` (interleaved timing rounds, for ``nn.conv_tune`` and
  the benchmarks), ``sharding`` (data parallelism), ``optim`` (torch.optim -> optax),
  ``checkpoint`` (atomic TrainState files);
* ``funcmod.articles``: the four seed articles' examples, ported and twinned;
* ``funcmod.corpus``: plain PyTorch models (ResNet, GPT, Llama, ...), the acceptance corpus
  of the porter (an examples wing beside ``articles``);
* ``funcmod.tools``: the ``funcmod`` command line.

Only torch-free modules are imported here. ``convert``, ``parity``, ``trajectory``,
``optim.from_torch``, ``articles.torch_models`` and ``articles.checks`` need torch and are
imported explicitly::

    from funcmod.articles import models, torch_models
    from funcmod.convert import torch_to_flax, flax_to_torch
"""

from funcmod import bound_step, checkpoint, layout, nn, precision, sharding, train, tree
from funcmod.tree import LeafDiff, assert_trees_close, compare_trees, count_params

__version__ = "0.1.0"

__all__ = [
    "LeafDiff",
    "__version__",
    "assert_trees_close",
    "bound_step",
    "checkpoint",
    "compare_trees",
    "count_params",
    "layout",
    "nn",
    "precision",
    "sharding",
    "train",
    "tree",
]
