"""The acceptance corpus of ``funcmod.port``: models in plain PyTorch, written the way their
usual sources write them (torchvision, nanoGPT, Hugging Face's Llama), at configurations small
enough that each runs forward and backward in milliseconds.

Modules, by family:

* ``vision``: ``ResNet`` (BasicBlock and Bottleneck), ``MobileNetV3``, ``UNet``, ``ViT``;
* ``language``: ``GPT`` (nanoGPT), ``Llama``;
* ``sequence``: ``LSTMClassifier``, ``GRUClassifier``;
* ``mlp``: ``WeightNormMLP``;
* ``catalog``: ``CORPUS``, the registry: name -> ``CorpusModel`` (its factory and its
  example inputs' shapes and dtypes).

This is an examples wing, like ``funcmod.articles``: it imports torch and the library core, and
the core never imports it.
"""

from funcmod.corpus import catalog, language, mlp, sequence, vision
from funcmod.corpus.catalog import CORPUS, CorpusModel, InputSpec, get_model

__all__ = [
    "CORPUS",
    "CorpusModel",
    "InputSpec",
    "catalog",
    "get_model",
    "language",
    "mlp",
    "sequence",
    "vision",
]
