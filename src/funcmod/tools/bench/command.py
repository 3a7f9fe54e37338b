"""``funcmod bench`` on the command line: the only place the bench meets argparse.

``add_parser(subparsers)`` registers the subcommand; ``run(args)`` turns the parsed arguments
into a ``BenchConfig`` and the output options, and everything below it sees only those.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from funcmod.articles.catalog import EXAMPLES
from funcmod.host_memory import HostMemoryError, retain_host_memory
from funcmod.tools.bench.config import BenchConfig, bench_defaults
from funcmod.tools.bench.report import render_markdown, write_results
from funcmod.tools.bench.run import run_bench

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``bench`` on the ``funcmod`` command line (what ``make bench`` runs)."""
    d = bench_defaults()
    p = subparsers.add_parser(
        "bench", help="time a training step: jitted Flax vs torch eager and torch.compile"
    )
    trainable = [n for n, e in EXAMPLES.items() if e.trainable]
    p.add_argument("examples", nargs="*", help=f"examples (default: all trainable: {trainable})")
    p.add_argument("--batch-sizes", type=int, nargs="+", help=f"default {d['batch_sizes']}")
    p.add_argument(
        "--image-sizes",
        type=int,
        nargs="*",
        help=f"image examples also run at these sizes, besides their own ({d['image_sizes']})",
    )
    p.add_argument("--optimizer", help=f"sgd, adam or adamw (default {d['optimizer']})")
    p.add_argument("--rounds", type=int, help=f"timed rounds, median reported ({d['rounds']})")
    p.add_argument("--min-time", type=float, help=f"seconds per measurement ({d['min_time']})")
    p.add_argument("--torch-threads", type=int, nargs="+", help="default: torch's own and 1")
    p.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("--out", help="also write bench.json, bench.md and bench.png here")
    p.add_argument(
        "--convs",
        action="store_true",
        help="the conv grid instead: every CPU lowering of funcmod.nn.conv vs torch eager "
        "(writes bench_convs.json and bench_convs.md with --out)",
    )
    p.add_argument(
        "--corpus",
        action="store_true",
        help="the ported corpus instead (funcmod.corpus through funcmod.port; the positional "
        "names are corpus models): jitted Flax train step vs torch eager and torch.compile "
        "(writes bench_corpus.json and bench_corpus.md with --out)",
    )
    p.add_argument(
        "--resnet",
        action="store_true",
        help="a hand-written ResNet-18 (funcmod.nn layers and its torch twin) instead: the "
        "library's jitted train step vs torch eager (writes bench_resnet.json and "
        "bench_resnet.md with --out)",
    )
    p.add_argument(
        "--resnet-batches",
        type=int,
        nargs="+",
        metavar="B",
        help="the ResNet-18's batch sizes (default 2 32; inputs 64x64)",
    )
    p.add_argument(
        "--tune-convs",
        action="store_true",
        help="with --resnet: also time the step with every convolution's plan measured on "
        "this machine (funcmod.nn.conv_tune.tuned_plans) instead of the rule's; with --convs: "
        "also measure each row's plan first and mark whether it holds in the grid",
    )
    p.add_argument(
        "--conv-inputs",
        nargs="+",
        metavar="SIZExBATCH",
        help="the conv grid's network inputs (default 64x2 224x2)",
    )
    p.add_argument(
        "--retain-host-memory",
        action="store_true",
        help="keep freed host memory for reuse before anything runs (funcmod.host_memory: "
        "no fresh pages for XLA's buffers on every step; the process keeps its peak memory)",
    )
    p.set_defaults(run=run)


def _config(args: argparse.Namespace) -> BenchConfig:
    """The ``BenchConfig`` the arguments ask for; an option not given keeps its default."""
    given = {
        "examples": tuple(args.examples),
        "batch_sizes": tuple(args.batch_sizes) if args.batch_sizes else None,
        "image_sizes": tuple(args.image_sizes) if args.image_sizes is not None else None,
        "optimizer": args.optimizer,
        "rounds": args.rounds,
        "min_time": args.min_time,
        "torch_threads": tuple(args.torch_threads) if args.torch_threads else None,
        "torch_compile": not args.no_torch_compile,
    }
    return BenchConfig(**{k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """``funcmod bench``: build the config from the parsed arguments, run, print, write.

    Prints markdown (or JSON with ``--json``) to stdout and one line per case to stderr; with
    ``--out DIR`` also writes ``bench.json``, ``bench.md`` and ``bench.png`` there. Returns 0,
    or 2 when torch is missing or a setting is invalid: speed targets are reported, not
    enforced.
    """
    if args.retain_host_memory:
        try:
            if not retain_host_memory():
                print("funcmod bench: no glibc mallopt here; host memory left as it is",
                      file=sys.stderr)  # fmt: skip
        except HostMemoryError as e:
            print(f"funcmod bench: {e}", file=sys.stderr)
            return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("funcmod bench needs torch: pip install 'funcmod[torch]'", file=sys.stderr)
        return 2
    if getattr(args, "tune_convs", False) and not (args.resnet or args.convs):
        print("funcmod bench: --tune-convs applies to --resnet and --convs only", file=sys.stderr)
        return 2
    try:
        config = None if getattr(args, "corpus", False) else _config(args)
    except ValueError as e:
        print(f"funcmod bench: {e}", file=sys.stderr)
        return 2
    as_json, outdir = bool(args.json), args.out
    if getattr(args, "corpus", False):
        return _run_corpus(args, as_json, outdir)
    if getattr(args, "convs", False):
        return _run_convs(args, as_json, outdir)
    if getattr(args, "resnet", False):
        return _run_resnet(args, as_json, outdir)
    result = run_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if as_json else render_markdown(result))
    if outdir:
        for path in write_results(result, outdir).values():
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _run_convs(args: argparse.Namespace, as_json: bool, outdir: str | None) -> int:
    """``funcmod bench --convs``: the conv grid (``funcmod.tools.bench.convs``)."""
    from funcmod.tools.bench.convs import (
        ConvBenchConfig,
        default_grid,
        run_conv_bench,
    )
    from funcmod.tools.bench.convs_report import render_conv_markdown

    try:
        inputs = [tuple(int(v) for v in s.lower().split("x")) for s in args.conv_inputs or ()]
        if any(len(i) != 2 or min(i) < 1 for i in inputs):
            raise ValueError
    except ValueError:
        print(
            f"funcmod bench: --conv-inputs takes SIZExBATCH, got {args.conv_inputs}",
            file=sys.stderr,
        )
        return 2
    given = {"rounds": args.rounds, "min_time": args.min_time, "tune": args.tune_convs or None}
    if args.torch_threads:
        given["torch_threads"] = tuple(args.torch_threads)
    try:
        config = ConvBenchConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        print(f"funcmod bench: {e}", file=sys.stderr)
        return 2
    rows = default_grid(inputs) if inputs else default_grid()
    result = run_conv_bench(
        config, rows, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    markdown = render_conv_markdown(result)
    print(json.dumps(result, indent=2) if as_json else markdown)
    if outdir:
        _write(outdir, "bench_convs", result, markdown)
    return 0


def _write(outdir: str, stem: str, result: dict[str, Any], markdown: str) -> None:
    """``<stem>.json`` and ``<stem>.md`` into ``outdir`` (created), announced on stderr."""
    from pathlib import Path

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}", file=sys.stderr)


def _run_resnet(args: argparse.Namespace, as_json: bool, outdir: str | None) -> int:
    """``funcmod bench --resnet``: the ResNet-18 step (``funcmod.tools.bench.resnet``)."""
    from funcmod.tools.bench.resnet import (
        ResNetBenchConfig,
        render_resnet_markdown,
        run_resnet_bench,
    )

    given = {
        "batches": tuple(args.resnet_batches) if args.resnet_batches else None,
        "rounds": args.rounds,
        "min_time": args.min_time,
        "torch_threads": tuple(args.torch_threads) if args.torch_threads else None,
        "tune_convs": bool(getattr(args, "tune_convs", False)) or None,
    }
    try:
        config = ResNetBenchConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        print(f"funcmod bench: {e}", file=sys.stderr)
        return 2
    result = run_resnet_bench(config, progress=lambda s: print(s, file=sys.stderr, flush=True))
    markdown = render_resnet_markdown(result)
    print(json.dumps(result, indent=2) if as_json else markdown)
    if outdir:
        _write(outdir, "bench_resnet", result, markdown)
    return 0


def _run_corpus(args: argparse.Namespace, as_json: bool, outdir: str | None) -> int:
    """``funcmod bench --corpus``: the ported corpus (``funcmod.tools.bench.corpus``)."""
    from funcmod.tools.bench.corpus import (
        CorpusBenchConfig,
        render_corpus_markdown,
        run_corpus_bench,
    )

    given = {"rounds": args.rounds, "min_time": args.min_time}
    try:
        config = CorpusBenchConfig(
            models=tuple(args.examples),
            torch_compile=not args.no_torch_compile,
            torch_threads=args.torch_threads[0] if args.torch_threads else 1,
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValueError as e:
        print(f"funcmod bench: {e}", file=sys.stderr)
        return 2
    result = run_corpus_bench(config, progress=lambda s: print(s, file=sys.stderr, flush=True))
    markdown = render_corpus_markdown(result)
    print(json.dumps(result, indent=2) if as_json else markdown)
    if outdir:
        _write(outdir, "bench_corpus", result, markdown)
    return 0
