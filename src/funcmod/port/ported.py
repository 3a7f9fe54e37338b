"""``port(model, args)``: a torch module as Flax source, its module, its variables, and the
parity check and save that go with them."""

from __future__ import annotations

import copy
import linecache
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from funcmod.convert import torch_to_flax
from funcmod.parity import ParityReport, check_parity
from funcmod.port.capture import UnsupportedError, capture, find_unsupported
from funcmod.port.codegen import generate
from funcmod.port.saved import save as save_files
from funcmod.precision import float_dtype, x64_for

__all__ = ["Ported", "format_source", "port"]


def ruff_binary() -> str | None:
    """The ``ruff`` executable next to this Python, else on PATH, else None."""
    candidates = [Path(sys.executable).with_name("ruff"), shutil.which("ruff")]
    return next((str(c) for c in candidates if c and Path(c).exists()), None)


def format_source(source: str) -> str:
    """``source`` formatted by ``ruff format`` (line length 100) when the ``ruff`` binary is
    found next to this Python or on PATH; as it is otherwise (ruff is a development tool, not a
    dependency)."""
    exe = ruff_binary()
    if exe is None:
        return source
    try:
        out = subprocess.run(
            [exe, "format", "--line-length", "100", "--stdin-filename", "ported.py", "-"],
            input=source,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return source
    return out.stdout


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().strip("_") or "model"


def _exec_source(source: str, name: str) -> types.ModuleType:
    filename = f"<funcmod.port {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    mod = types.ModuleType(f"funcmod_port_{name}")
    exec(compile(source, filename, "exec"), mod.__dict__)  # the source we just generated
    return mod


@dataclass(frozen=True)
class _ApplyOnly:
    module: Any

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        return self.module.apply(variables, *args, **kwargs)


@dataclass
class Ported:
    """A ported model.

    Attributes:
      source: the generated Flax Linen source (imports included), ruff-formatted when ruff is
        available.
      module: an instance of the root class of ``source``.
      variables: ``funcmod.convert.torch_to_flax(model)``: the model's weights in the ported
        module's tree.
      model: the torch module it was ported from; args: the example inputs (torch tensors).
      name: snake-case name of the root class (the file name ``save`` uses).
    """

    source: str
    module: Any
    variables: dict[str, Any]
    model: nn.Module
    args: tuple
    name: str
    class_name: str
    _namespace: types.ModuleType = field(repr=False, default=None)

    def check(self, dtype: Any = np.float32, *, seed: int = 0) -> ParityReport:
        """Forward output and every gradient (parameters and float inputs) of the ported module
        against the torch model, in eval mode, on the example inputs, in ``dtype`` (float32, or
        float64 with a float64 copy of the model and 64-bit JAX for the duration).

        Integer inputs (token ids) are passed through; float inputs are cast to ``dtype``.
        Gradient leaves are held to ``rtol`` per leaf, or to the rounding level of the whole
        gradient (``funcmod.parity.check_parity``'s ``grad_floor``): a gradient that is exactly
        zero is rounding noise in both frameworks.
        """
        dt = float_dtype(dtype)
        model = copy.deepcopy(self.model).to(getattr(torch, dt.name)).eval()
        inputs = []
        for a in self.args:
            arr = a.detach().cpu().numpy()
            inputs.append(arr.astype(dt) if np.issubdtype(arr.dtype, np.floating) else arr)
        with x64_for(dt):
            variables = torch_to_flax(model)
            # The generated classes create float32 parameters in init (as torch's default):
            # the float32 check compares the init's tree with the variables; in float64 the
            # module is applied only (its tree is the same), through an object with Linen's
            # apply and no init.
            module = self.module if dt == np.float32 else _ApplyOnly(self.module)
            return check_parity(
                model, module, variables, inputs, seed=seed, name=self.class_name, grad_floor=True
            )

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.py`` (the source) and ``<name>.safetensors`` (the variables keyed by
        Flax paths) under ``directory``; ``funcmod.port.load(directory)`` reads them back
        without torch."""
        return save_files(directory, self.name, self.source, self.class_name, self.variables)


def port(model: nn.Module, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> Ported:
    """Port ``model`` to Flax: capture its ``forward`` on the example ``args`` (torch tensors
    in PyTorch's layout; ``kwargs`` too) with ``torch.export``, generate Flax Linen source for
    it, and load its weights.

    Raises:
      TypeError: ``model`` is not an ``nn.Module`` or ``args`` not a sequence.
      UnsupportedError: ops or modules the porter cannot write, every one listed with its module
        path and torch source line, found before any code is generated.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"port expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(args, torch.Tensor) or not isinstance(args, (tuple, list)):
        raise TypeError(
            f"port expects args as a tuple of example inputs, got {type(args).__name__}"
        )
    cap = capture(model, tuple(args), kwargs)
    problems = find_unsupported(cap)
    if problems:
        raise UnsupportedError(problems)
    body, root = generate(cap)
    doc = f'"""Flax port of {type(model).__qualname__}, generated by funcmod.port."""'
    source = format_source(f"{doc}\n\n{body}")
    name = _snake(root)
    namespace = _exec_source(source, name)
    return Ported(
        source=source,
        module=getattr(namespace, root)(),
        variables=torch_to_flax(model),
        model=model,
        args=tuple(args),
        name=name,
        class_name=root,
        _namespace=namespace,
    )
