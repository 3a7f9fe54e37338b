"""The corpus by name: how to build each model and what it takes as input.

``CORPUS["resnet"].build()`` is a fresh torch module (seeded, so every build has the same
weights), ``CORPUS["resnet"].example_inputs()`` a tuple of torch tensors in PyTorch's layout:
float inputs in the requested dtype, token ids int64 in ``[0, vocab)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from funcmod.corpus.language import GPT, GPTConfig, Llama, LlamaConfig
from funcmod.corpus.mlp import WeightNormMLP
from funcmod.corpus.sequence import GRUClassifier, LSTMClassifier
from funcmod.corpus.vision import MobileNetV3, ResNet, UNet, ViT

__all__ = ["CORPUS", "CorpusModel", "InputSpec", "get_model"]


@dataclass(frozen=True)
class InputSpec:
    """One positional input: its shape and dtype. ``vocab`` set means int64 token ids in
    ``[0, vocab)``; otherwise a standard normal float tensor in the model's dtype."""

    shape: tuple[int, ...]
    vocab: int | None = None

    @property
    def is_tokens(self) -> bool:
        return self.vocab is not None


@dataclass(frozen=True)
class CorpusModel:
    """A corpus entry.

    Attributes:
      name: the registry key (also the gallery file's name, ``docs/gallery/<name>.py``).
      factory: builds the torch module; called as ``factory()``, or ``factory(dropout=p)``
        when ``dropout`` is True.
      inputs: the positional inputs ``forward`` takes.
      dropout: whether ``factory`` takes a ``dropout`` probability.
    """

    name: str
    factory: Callable[..., nn.Module]
    inputs: tuple[InputSpec, ...]
    dropout: bool = False

    def build(
        self, *, dtype: torch.dtype = torch.float32, seed: int = 0, dropout: float | None = None
    ) -> nn.Module:
        """A new module with weights drawn under ``torch.manual_seed(seed)``, cast to ``dtype``,
        in train mode (torch's default). ``dropout`` overrides the model's dropout probability
        (``0.0`` for runs that must be deterministic); a model without dropout refuses one."""
        if dropout is not None and not self.dropout:
            raise ValueError(f"corpus model {self.name!r} has no dropout to set")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = self.factory() if dropout is None else self.factory(dropout=dropout)
        return module.to(dtype)

    def example_inputs(
        self, *, dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """The inputs, drawn from ``torch.Generator().manual_seed(seed)``: floats in ``dtype``,
        token ids as int64."""
        gen = torch.Generator().manual_seed(seed)
        return tuple(
            torch.randint(0, spec.vocab, spec.shape, generator=gen, dtype=torch.int64)
            if spec.is_tokens
            else torch.randn(spec.shape, generator=gen, dtype=dtype)
            for spec in self.inputs
        )


def _entries() -> dict[str, CorpusModel]:
    image32 = (InputSpec((2, 3, 32, 32)),)
    image16 = (InputSpec((2, 3, 16, 16)),)
    entries = [
        CorpusModel("resnet", ResNet, image32),
        CorpusModel("mobilenetv3", MobileNetV3, image32, dropout=True),
        CorpusModel("unet", UNet, image16),
        CorpusModel("vit", ViT, image16, dropout=True),
        CorpusModel(
            "gpt",
            lambda dropout=0.0: GPT(GPTConfig(dropout=dropout)),
            (InputSpec((2, 8), vocab=GPTConfig.vocab_size),),
            dropout=True,
        ),
        CorpusModel("llama", Llama, (InputSpec((2, 8), vocab=LlamaConfig.vocab_size),)),
        CorpusModel("lstm", LSTMClassifier, (InputSpec((2, 6, 8)),), dropout=True),
        CorpusModel("gru", GRUClassifier, (InputSpec((2, 6), vocab=50),), dropout=True),
        CorpusModel("weightnorm_mlp", WeightNormMLP, (InputSpec((4, 16)),)),
    ]
    return {e.name: e for e in entries}


CORPUS: dict[str, CorpusModel] = _entries()


def get_model(name: str) -> CorpusModel:
    """The corpus entry ``name``; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return CORPUS[name]
    except KeyError:
        raise KeyError(f"no corpus model {name!r}; known: {', '.join(CORPUS)}") from None
