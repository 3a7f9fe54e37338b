"""``funcmod port FILE.py:FACTORY --input 2,3,64,64``: port a PyTorch model to Flax source.

``FACTORY`` is a callable in ``FILE.py`` (a class or a function) that returns the torch module
when called with no arguments. Each ``--input`` is one positional input's shape; its dtype is
``--input-dtype`` (once for every input, or once per input; default float32). Float inputs are
standard normal, integer ones drawn from ``[0, --int-high)`` (default: the smallest
``nn.Embedding`` of the model, else 2). The command ports the model (``funcmod.port.port``),
prints the parity table in float32 and float64, and with ``--out DIR`` writes ``DIR/<name>.py``
and ``DIR/<name>.safetensors``.

Exit status: 0 when parity holds in both dtypes, 1 when it fails, 2 on bad arguments or anything
it cannot port (every unsupported op and module is listed).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from funcmod.tools.args import positive_int

__all__ = ["add_parser", "run"]

_DTYPES = ("float32", "float64", "int64", "int32", "bool")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is comma-separated positive integers (2,3,64,64), got {text!r}"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"a shape needs positive sizes, got {text!r}")
    return shape


def add_parser(subparsers: Any) -> None:
    """Register ``port`` on the ``funcmod`` command line."""
    p = subparsers.add_parser(
        "port", help="port a PyTorch model to Flax source, with its weights and parity table"
    )
    p.add_argument("target", help="FILE.py:FACTORY, a callable returning the torch module")
    p.add_argument(
        "--input",
        type=_shape,
        action="append",
        required=True,
        help="an input's shape, e.g. 2,3,64,64",
    )
    p.add_argument(
        "--input-dtype",
        choices=_DTYPES,
        action="append",
        help="dtype of the inputs (default float32)",
    )
    p.add_argument("--int-high", type=positive_int, help="integer inputs are drawn from [0, N)")
    p.add_argument("--out", type=Path, help="write <name>.py and <name>.safetensors here")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    p.add_argument("--print-source", action="store_true", help="print the generated source")
    p.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"funcmod port: error: {message}", file=sys.stderr)
    return 2


def _load_factory(target: str) -> Any:
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"expected FILE.py:FACTORY, got {target!r}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file} is not a file")
    spec = importlib.util.spec_from_file_location(f"funcmod_port_user_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{file} has no callable {name!r}")
    return factory


def _inputs(model: Any, shapes: list, dtypes: list[str], high: int | None, seed: int) -> tuple:
    import torch

    if high is None:
        sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        high = min(sizes) if sizes else 2
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dt in zip(shapes, dtypes, strict=True):
        if dt.startswith("float"):
            out.append(torch.randn(shape, generator=gen, dtype=getattr(torch, dt)))
        elif dt == "bool":
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, high, shape, generator=gen, dtype=getattr(torch, dt)))
    return tuple(out)


def _table(reports: list) -> str:
    lines = [
        f"{'dtype':8} {'forward max rel':>16} {'grad max rel':>14} {'grad floor':>11} "
        f"{'target':>7}  status",
    ]
    for r in reports:
        lines.append(
            f"{r.dtype:8} {r.forward_max_rel:16.2e} {r.grad_max_rel:14.2e} {r.grad_atol:11.2e} "
            f"{r.rtol:7.0e}  {'PASS' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    dtypes = args.input_dtype or ["float32"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(args.input)
    if len(dtypes) != len(args.input):
        return _fail(f"{len(args.input)} --input but {len(dtypes)} --input-dtype (give 1 or each)")
    try:
        factory = _load_factory(args.target)
    except (ValueError, ImportError, SyntaxError) as e:
        return _fail(str(e))
    import torch

    from funcmod.port import port

    try:
        model = factory()
    except Exception as e:  # the user's factory: report it, do not crash
        return _fail(f"{args.target}() raised {type(e).__name__}: {e}")
    if not isinstance(model, torch.nn.Module):
        return _fail(f"{args.target}() returned {type(model).__name__}, not a torch.nn.Module")
    xs = _inputs(model, args.input, dtypes, args.int_high, args.seed)
    try:
        ported = port(model, xs)
    except NotImplementedError as e:  # UnsupportedError, CodegenError: every item listed
        return _fail(str(e))
    except Exception as e:  # torch.export failing on the model, shape errors in forward
        return _fail(f"cannot capture {args.target}: {type(e).__name__}: {e}")
    if args.print_source:
        print(ported.source)
    reports = [ported.check(np.float32), ported.check(np.float64)]
    print(f"{ported.class_name}: parity of the port against the torch model")
    print(_table(reports))
    for r in reports:
        if not r.ok:
            print(r)
    if args.out is not None:
        out = ported.save(args.out)
        print(f"wrote {out / (ported.name + '.py')} and {out / (ported.name + '.safetensors')}")
    return 0 if all(r.ok for r in reports) else 1
