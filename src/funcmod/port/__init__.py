"""``funcmod.port``: a PyTorch model becomes readable Flax Linen source, its weights and a
parity report.

* ``funcmod.port.ported``: ``port(model, args)`` -> ``Ported`` (``.source``, ``.module``,
  ``.variables``, ``.check()``, ``.save()``).
* ``funcmod.port.capture``: ``torch.export`` capture and the module-call tree; the
  ``UnsupportedError`` that lists every op and module it cannot port.
* ``funcmod.port.codegen``: the Flax source, one class per torch module class; its ``setup``
  lines come from ``funcmod.port.declare``, its dtypes from ``funcmod.port.dtypes`` (the
  model's dtype read off a tensor, ``h.dtype``, so a float32 port stays float32 under x64).
* ``funcmod.port.ops``: the op table (``register_op``), with its emitters in
  ``funcmod.port.ops_tensor``, ``funcmod.port.ops_shape``, ``funcmod.port.ops_nn`` and
  ``funcmod.port.ops_index``.
* ``funcmod.port.modules``: torch.nn classes ported as their ``funcmod.nn`` twin
  (``register_module``).
* ``funcmod.port.params``: where each tensor the graph reads lives (a parameter, a buffer, a
  constant written into the source).
* ``funcmod.port.saved``: ``load(directory)`` (and the writer behind ``Ported.save``),
  torch-free.

Only ``load`` imports without torch; the other names load ``torch`` when first used.
"""

from __future__ import annotations

from typing import Any

from funcmod.port.saved import load

__all__ = [
    "Ported",
    "UnsupportedError",
    "load",
    "port",
    "register_module",
    "register_op",
]

_LAZY = {
    "port": "funcmod.port.ported",
    "Ported": "funcmod.port.ported",
    "UnsupportedError": "funcmod.port.capture",
    "register_op": "funcmod.port.ops",
    "register_module": "funcmod.port.modules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'funcmod.port' has no attribute {name!r}")
