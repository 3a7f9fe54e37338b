"""The four seed articles' examples: Flax Linen ports (``models``), Flax NNX ports
(``nnx_models``), PyTorch twins (``torch_models``), the catalog that names them (``catalog``),
the parity and trajectory checks bound to them (``checks``, needs torch), and the digits examples
(``data``, ``digits``).

One name finds everything about an example: ``models.MLP``, ``nnx_models.MLP``,
``torch_models.MLP``, ``EXAMPLES['MLP']``, ``comparisons/mlp.py``, ``funcmod show MLP``.
Only the torch-free modules are imported here.
"""

from funcmod.articles import catalog, models, nnx_models
from funcmod.articles.catalog import EXAMPLES, Example, get_example

__all__ = ["EXAMPLES", "Example", "catalog", "get_example", "models", "nnx_models"]
