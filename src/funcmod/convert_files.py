"""Torch-named safetensors files to Flax variables and back, without loading weights into torch.

``load_torch_safetensors(path, module)`` reads a checkpoint saved from PyTorch (keys as in
``state_dict()``, tensors in torch's layouts) and returns Flax variables;
``save_torch_safetensors(variables, module, path)`` writes Flax variables as such a file, which
``module.load_state_dict(safetensors.torch.load_file(path))`` loads strictly. No weight is
loaded into or read from a torch module: the module only says how names and layouts map.

Why a module is still needed: a torch-named file holds names and arrays, and neither says how
a tensor maps to a Flax leaf. The module's structure does:

* the layer type decides the layout: a 2-D ``weight`` is transposed for ``nn.Linear`` (kernel
  (in, out)) but not for ``nn.Embedding``, a 4-D one is permuted for ``Conv2d`` and permuted
  differently for ``ConvTranspose2d``; BatchNorm's ``running_var`` goes to ``batch_stats``;
* the container type decides the name: ``features.0.weight`` is ``features/layers_0`` under an
  ``nn.Sequential`` but ``features_0`` under an ``nn.ModuleList``;
* several-tensor rules need the layer: ``MultiheadAttention``'s packed ``in_proj_weight`` is
  split in three, recurrent layers' tensors are per layer and direction;
* ties are object identity (``lm_head.weight is wte.weight``), which no file records.

Only the structure is read, so the module may be built on the meta device, which allocates
nothing: ``with torch.device("meta"): model = MyNet()``. It must have the file's dtypes
(``model.to(torch.float64)`` works on the meta device too).

Both directions are strict, as the rest of ``funcmod.convert``: every missing key, unexpected
key, shape and dtype that does not fit is named in one ``ConversionError``, raised before any
work; a file is written to a temporary name in the same directory and renamed into place, so a
failed or interrupted write leaves no file, or the previous one, behind. Conversion never
casts, so file -> Flax -> file is bitwise the same tensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError
from torch import nn

from funcmod.convert import ConversionError, flax_to_state_dict, tied_parameters, torch_to_flax

__all__ = ["load_torch_safetensors", "read_safetensors", "save_torch_safetensors"]


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy array, by key (bfloat16 as
    ``ml_dtypes.bfloat16``). Raises ``ConversionError`` naming the file if it is missing or is
    not a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no safetensors file at {str(path)!r}")
    try:
        return safetensors.numpy.load_file(path)
    except SafetensorError as err:
        raise ConversionError(f"{str(path)!r} is not a readable safetensors file: {err}") from err


def load_torch_safetensors(
    path: str | os.PathLike, module: nn.Module, *, template: Any = None
) -> dict[str, Any]:
    """Flax variables from a torch-named safetensors file.

    Args:
      path: the file, keyed by ``module.state_dict()``'s names. A tied tensor may be stored
        under any one of its names or under several (then they must hold the same values);
        BatchNorm's ``num_batches_tracked`` may be absent, as ``load_state_dict`` allows.
      module: the torch module the file was saved from, for its structure only (see the module
        docstring); it may live on the meta device. Its tensors are not read or changed.
      template: optional Flax variables or ``jax.eval_shape`` shapes to check the result against.

    Returns:
      ``{'params': ..., 'batch_stats': ..., 'buffers': ...}`` as ``torch_to_flax`` gives them.

    Raises:
      ConversionError: the file is missing or unreadable; a key missing, unexpected, or with a
        shape or dtype that does not fit the module (all named at once); tied names holding
        different values.
    """
    arrays = read_safetensors(path)
    ties = tied_parameters(module)  # later name -> the name that holds the tensor
    differing = []
    for alias, first in ties.items():
        if alias not in arrays:
            continue
        if first not in arrays:  # the file kept the tensor under its other name
            arrays[first] = arrays.pop(alias)
        elif not (
            arrays[alias].shape == arrays[first].shape
            and arrays[alias].dtype == arrays[first].dtype
            and np.array_equal(arrays[alias], arrays[first])
        ):
            differing.append((f"tied {alias!r}", f"the value of {first!r}", "a different value"))
        else:
            del arrays[alias]
    if differing:
        raise ConversionError(f"{str(path)!r} breaks the ties of its module", mismatched=differing)
    try:
        return torch_to_flax(module, state_dict=arrays, template=template)
    except ConversionError as err:
        raise ConversionError(
            f"{str(path)!r}: {str(err).splitlines()[0]}",
            missing=err.missing,
            unexpected=err.unexpected,
            mismatched=err.mismatched,
        ) from None


def save_torch_safetensors(
    variables: Mapping[str, Any],
    module: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write Flax variables as a torch-named safetensors file, atomically.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` for ``module``'s Flax twin (for example
        from ``torch_to_flax``, ``load_torch_safetensors`` or a training run).
      module: the torch module whose names and layouts the file takes (structure only; it may
        live on the meta device). Every Flax leaf it expects must be present, and no other.
      path: the file to write; its directory must exist. An existing file is replaced only once
        the new one is complete.
      metadata: optional string metadata stored in the file's header (``{"format": "pt"}`` is
        added, the marker Hugging Face's loaders look for).

    The file holds every key of ``module.state_dict()``, a tied tensor under each of its names,
    except BatchNorm's ``num_batches_tracked`` counter, which ``load_state_dict`` fills in.

    Raises:
      ConversionError: a leaf missing, unexpected, or of the wrong shape or dtype (all named at
        once), before anything is written.
    """
    state = flax_to_state_dict(variables, module)
    path = Path(path)
    if not path.parent.is_dir():
        raise ConversionError(f"cannot write {str(path)!r}: {str(path.parent)!r} is no directory")
    data = safetensors.numpy.save(
        {k: np.ascontiguousarray(a) for k, a in state.items()},
        metadata={"format": "pt", **dict(metadata or {})},
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
