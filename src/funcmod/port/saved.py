"""A ported model on disk, torch-free: ``<name>.py`` (the generated Flax source, importable on
its own) and ``<name>.safetensors`` (the variables, keyed by their Flax paths,
``params/conv1/kernel``), with the root class's name in the file's metadata.

``load(directory)`` gives the module and its variables back without importing torch.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

__all__ = ["load", "save"]

_SEP = "/"


def save(directory: str | Path, name: str, source: str, class_name: str, variables: Any) -> Path:
    """Write ``<name>.py`` and ``<name>.safetensors`` under ``directory`` (created if needed).

    Both are written to temporary names first and renamed, so a failure leaves no half-written
    pair behind. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {
        _SEP.join(k): np.ascontiguousarray(np.asarray(v))
        for k, v in traverse_util.flatten_dict(dict(variables)).items()
    }
    py, st = directory / f"{name}.py", directory / f"{name}.safetensors"
    tmp_py, tmp_st = py.with_suffix(".py.tmp"), st.with_suffix(".safetensors.tmp")
    try:
        tmp_py.write_text(source, encoding="utf-8")
        save_file(flat, str(tmp_st), metadata={"class": class_name, "format": "funcmod.port"})
        tmp_py.replace(py)
        tmp_st.replace(st)
    finally:
        for t in (tmp_py, tmp_st):
            t.unlink(missing_ok=True)
    return directory


def load(directory: str | Path, name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The module and variables ``funcmod.port.Ported.save`` wrote to ``directory``.

    Args:
      directory: the folder holding ``<name>.py`` and ``<name>.safetensors``.
      name: which model, when the folder holds several; default: the only one there.

    Returns:
      ``(module, variables)``: an instance of the saved root class, and its variables as
      nested dicts of ``jax.Array``.

    Raises:
      FileNotFoundError: no (or no single) saved model in ``directory``, or its ``.py`` is
        missing; the message lists what is there.
    """
    from safetensors import safe_open

    directory = Path(directory)
    if name is None:
        found = sorted(p.stem for p in directory.glob("*.safetensors"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected one <name>.safetensors in {directory}, found {found or 'none'}; "
                "pass name="
            )
        name = found[0]
    py, st = directory / f"{name}.py", directory / f"{name}.safetensors"
    for f in (py, st):
        if not f.exists():
            raise FileNotFoundError(
                f"{f} does not exist (expected {name}.py and {name}.safetensors)"
            )
    with safe_open(str(st), framework="numpy") as f:
        meta = f.metadata() or {}
    class_name = meta.get("class")
    if not class_name:
        raise FileNotFoundError(f"{st} has no 'class' metadata: not written by funcmod.port")
    module_name = f"funcmod_port_saved_{name}_{abs(hash(str(py.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, py)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    spec.loader.exec_module(mod)
    flat = {tuple(k.split(_SEP)): jnp.asarray(v) for k, v in load_file(str(st)).items()}
    return getattr(mod, class_name)(), traverse_util.unflatten_dict(flat)
