"""``funcmod charts``: the charts of the documentation site, drawn from the JSON the other tools
write, never from numbers typed in.

Reads, from one results folder (``results/`` by default):

* ``compare.json`` (``funcmod compare --json > results/compare.json``): the max relative error
  of every example's forward and gradients in float32 and float64 -> ``parity.png``;
* ``bench.json`` (``funcmod bench --out results``): the speed-ups per case -> ``bench.png``
  (the bench's own ``plot_ratios``);
* ``digits_mlp.json``, ``digits_cnn.json`` (``funcmod digits mlp|cnn``): the two loss curves
  per model -> ``digits.png``.

A file that is not there is reported as missing, not drawn; a file that is there but lacks what
a chart needs is an error naming the file and the key. The site's build hook
(``funcmod.tools.docsite``) calls ``write_charts`` the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHARTS",
    "add_parser",
    "bench_chart",
    "digits_chart",
    "load_results",
    "parity_chart",
    "run",
    "write_charts",
]

# chart name -> the result files it is drawn from (any of them is enough for digits).
CHARTS: dict[str, tuple[str, ...]] = {
    "parity": ("compare.json",),
    "bench": ("bench.json",),
    "digits": ("digits_mlp.json", "digits_cnn.json"),
}
# Where an error is exactly zero the log scale has no place for it: drawn at this floor, marked.
_ZERO_FLOOR = 1e-18


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _require(data: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}; expected {list(keys)}")


def load_results(results: str | Path) -> dict[str, Any]:
    """The result files found in ``results``, parsed, keyed by file name (missing: absent)."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    found = {}
    for names in CHARTS.values():
        for name in names:
            path = results / name
            if path.is_file():
                try:
                    found[name] = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e})") from e
    return found


def parity_chart(compare: dict[str, Any], path: str | Path) -> Path:
    """Bars of the max relative error per example, forward and gradients, per dtype (log scale),
    with each dtype's target as a line. ``compare`` is ``funcmod compare --json``'s output."""
    _require(compare, ("examples",), "compare.json")
    rows = compare["examples"]
    if not rows:
        raise ValueError("compare.json: 'examples' is empty; nothing to draw")
    dtypes = list(rows[0]["parity"])
    series = [(dt, kind) for dt in dtypes for kind in ("forward", "grad")]
    plt = _pyplot()
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.8 * len(rows) + 2), 4.5))
    for i, (dt, kind) in enumerate(series):
        values = np.array([r["parity"][dt][f"{kind}_max_rel"] for r in rows], dtype=float)
        hatch = "//" if kind == "grad" else None
        color = "C0" if dt == "float32" else "C1"
        alpha = 1.0 if kind == "forward" else 0.55
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(
            x + offset,
            np.maximum(values, _ZERO_FLOOR),
            width,
            label=f"{dt} {kind}",
            color=color,
            alpha=alpha,
            hatch=hatch,
        )
    for dt, color in zip(dtypes, ("C0", "C1"), strict=False):
        rtol = rows[0]["parity"][dt]["rtol"]
        ax.axhline(rtol, color=color, linestyle="--", linewidth=1)
        ax.text(len(rows) - 0.5, rtol, f" {dt} target {rtol:g}", va="bottom", ha="right")
    ax.set_yscale("log")
    ax.set_ylim(_ZERO_FLOOR / 3, 1e-3)
    ax.set_ylabel(f"max relative error (log; exact 0 drawn at {_ZERO_FLOOR:g})")
    ax.set_xticks(x, [r["example"] for r in rows], rotation=30, ha="right")
    ax.set_title("PyTorch twin vs Flax port: max relative error over all leaves")
    ax.legend(fontsize=8, ncol=len(series), loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_chart(bench: dict[str, Any], path: str | Path) -> Path:
    """The bench's speed-up bars (``funcmod.tools.bench.report.plot_ratios``) from its JSON."""
    from funcmod.tools.bench.report import plot_ratios

    _require(bench, ("cases", "machine"), "bench.json")
    return plot_ratios(bench, path)


def digits_chart(runs: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """The loss per step of the twin and of the port, one panel per model (``runs`` maps
    ``'mlp'``/``'cnn'`` to that model's ``digits_<model>.json``)."""
    if not runs:
        raise ValueError("digits_chart: no run given; expected digits_mlp.json or digits_cnn.json")
    for model, run in runs.items():
        _require(run, ("torch_losses", "flax_losses"), f"digits_{model}.json")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4), squeeze=False)
    for ax, (model, run) in zip(axes[0], runs.items(), strict=True):
        ax.plot(run["torch_losses"], label="PyTorch (torch.optim.Adam)", linewidth=2.5, alpha=0.6)
        ax.plot(run["flax_losses"], label="Flax (optax, lax.scan)", linewidth=1, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        ax.set_title(
            f"digits, {model}: test accuracy {run['torch_accuracy']:.4f} (torch), "
            f"{run['flax_accuracy']:.4f} (Flax)",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_charts(results: str | Path, out: str | Path) -> dict[str, Path | None]:
    """Draw every chart whose result file is in ``results`` into ``out`` (created).

    Returns ``{chart name: PNG path, or None where its result file is missing}``.
    """
    found = load_results(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = dict.fromkeys(CHARTS)
    if "compare.json" in found:
        written["parity"] = parity_chart(found["compare.json"], out / "parity.png")
    if "bench.json" in found:
        written["bench"] = bench_chart(found["bench.json"], out / "bench.png")
    runs = {m: found[f"digits_{m}.json"] for m in ("mlp", "cnn") if f"digits_{m}.json" in found}
    if runs:
        written["digits"] = digits_chart(runs, out / "digits.png")
    return written


def add_parser(subparsers: Any) -> None:
    """Register ``charts`` on the ``funcmod`` command line."""
    p = subparsers.add_parser("charts", help="draw the site's charts from the tools' JSON")
    p.add_argument("--results", default="results", help="where the JSON files are (results)")
    p.add_argument("--out", help="where the PNGs go (default: the results folder)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Draw what the results allow, say what is missing; exit 0, or 2 without a results folder
    or with nothing to draw."""
    try:
        written = write_charts(args.results, args.out or args.results)
    except (FileNotFoundError, ValueError) as e:
        print(f"funcmod charts: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        if path is None:
            print(f"{name}: not drawn, no {' or '.join(CHARTS[name])} in {args.results}")
        else:
            print(f"{name}: {path}")
    if not any(written.values()):
        print(f"funcmod charts: nothing to draw in {args.results}", file=sys.stderr)
        return 2
    return 0
