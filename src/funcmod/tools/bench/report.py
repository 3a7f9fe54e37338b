"""A bench result as the reader sees it: a markdown table, a bar chart of the speed-ups, and
the three files ``write_results`` puts side by side (``bench.json``, ``bench.md``,
``bench.png``). Everything here reads the JSON-able result of ``run_bench`` and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from funcmod.tools.bench.config import JAX_VARIANTS, case_label
from funcmod.tools.bench.profile import format_ops
from funcmod.tools.bench.timing import format_seconds

__all__ = ["plot_ratios", "render_markdown", "write_results"]

_OVERHEADS = ("step_overhead", "bound_overhead")  # make_train_step's, bind_train_step's


def _fmt_ratio(ratios: dict[str, float], key: str) -> str:
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def _best_cell(row: dict[str, Any], kind: str) -> str:
    name = row["best_torch"].get(kind)
    if name is None:
        return "-"
    threads = name.rsplit("_t", 1)[1]
    return f"{format_seconds(row['variants'][name]['step_s'])} ({threads}t)"


def _fmt_load(result: dict[str, Any]) -> str:
    def fmt(load: list[float] | None) -> str:
        return "n/a" if load is None else " ".join(f"{x:.2f}" for x in load)

    return f"{fmt(result['load_before'])} / {fmt(result['load_after'])}"


def render_markdown(result: dict[str, Any]) -> str:
    """The result as markdown: the machine, the per-case table and the targets."""
    m, peak, cfg = result["machine"], result["peak"], result["config"]
    rows = result["cases"]
    has_compile = any("torch_compile" in r["best_torch"] for r in rows)
    threads = ", ".join(str(t) for t in cfg["torch_threads"])
    lines = [
        f"Measured {result['started']} on {m['cpu']} ({m['cores']} cores), JAX backend "
        f"`{m['backend']}` ({m['device']}); jax {m['versions']['jax']}, flax "
        f"{m['versions']['flax']}, optax {m['versions']['optax']}, torch "
        f"{m['versions']['torch']}. Load average (1, 5, 15 min) before / after: "
        f"{_fmt_load(result)}.",
        "",
        f"One training step: MSE against random targets, float32, {cfg['optimizer']} "
        f"(`torch.optim` and its `from_torch` translation). Median over {cfg['rounds']} "
        f"interleaved rounds. torch timed at {threads} threads, the faster shown (`2t`: 2 "
        f"threads). Matmul peak ({peak['n']}x{peak['n']} float32, best of XLA "
        f"{peak['jax_gflops']:.1f} and torch {peak['torch_gflops']:.1f}): "
        f"{peak['peak_gflops']:.1f} GFLOP/s.",
        "",
    ]
    head = ["case", "torch eager"] + (["torch.compile"] if has_compile else [])
    head += ["Flax step", "Flax bound", "Flax scan", "pure JAX", "eager / step"]
    head += ["compile / step"] if has_compile else []
    head += ["eager / scan", "overhead step / bound", "GFLOP/s step (peak)"]
    head += ["1st call step/bound/scan/pure"]
    head += ["torch.compile 1st call"] if has_compile else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        v, q = r["variants"], r["ratios"]
        cells = [case_label(r), _best_cell(r, "torch_eager")]
        cells += [_best_cell(r, "torch_compile")] if has_compile else []
        cells += [format_seconds(v[name]["step_s"]) if name in v else "-" for name in JAX_VARIANTS]
        cells.append(_fmt_ratio(q, "eager_over_step"))
        cells += [_fmt_ratio(q, "compile_over_step")] if has_compile else []
        cells += [
            _fmt_ratio(q, "eager_over_scan"),
            " / ".join(f"{q[k]:+.1%}" if k in q else "-" for k in _OVERHEADS),
            f"{v['flax_step']['gflops']:.2f} ({v['flax_step']['peak_fraction']:.1%})",
            " / ".join(f"{v[n]['first_call_s']:.2f}" if n in v else "-" for n in JAX_VARIANTS)
            + " s",
        ]
        if has_compile:
            name = r["best_torch"].get("torch_compile")
            cells.append(f"{v[name]['first_call_s']:.1f} s" if name else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Times are per training step; a ratio above 1 means the Flax step is faster. Flax "
        "bound: `bind_train_step`, the state held as leaves between steps. Flax scan: "
        "`make_train_epoch`, several steps per dispatch. Overhead: funcmod's step and bound step "
        "over a hand-written `jax.jit(value_and_grad + optax)` step. GFLOP/s: XLA's FLOP count "
        "of the compiled step over its median time. 1st call: trace, compile and one step "
        "(torch.compile's is short when inductor's on-disk cache is warm from an earlier run).",
        "",
        *_why_slower_lines(rows),
        "| target | result | worst case |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        status = {True: "met", False: "**not met**", None: "not measured"}[t["ok"]]
        worst = "-" if t["worst"] is None else f"{t['worst']:.3g} ({t['worst_case']})"
        lines.append(f"| {t['description']} | {status} | {worst} |")
    return "\n".join(lines) + "\n"


def _why_slower_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One bullet per case whose Flax step is slower than torch eager, from its measurements
    (``bench_case``'s ``why_slower``); nothing when there is none."""
    slower = [r for r in rows if r.get("why_slower")]
    if not slower:
        return []
    lines = [
        "Why a Flax step is slower than torch eager, measured after the timed rounds: XLA's "
        "cost analysis of the compiled step, the process's minor page faults per step, the "
        "scanned epoch's time per step (as a fraction of the step's: what is left without a "
        "dispatch and fresh buffers per step), and a profiler trace of XLA's operations "
        "(milliseconds per step summed over threads, the largest kinds).",
        "",
    ]
    for r in slower:
        why, v = r["why_slower"], r["variants"]
        step_s = v["flax_step"]["step_s"]
        torch_s = v[r["best_torch"]["torch_eager"]]["step_s"]
        gflop = r["flops"] / 1e9
        parts = [
            f"XLA's step {gflop:.3g} GFLOP and {r['xla_bytes'] / 2**20:.0f} MiB accessed, "
            f"{gflop / step_s:.1f} GFLOP/s (torch eager {gflop / torch_s:.1f} at the same FLOPs)",
            f"{why['page_faults_per_step']:,.0f} page faults per step",
        ]
        if "flax_scan" in v:
            scan_s = v["flax_scan"]["step_s"]
            parts.append(
                f"scanned {format_seconds(scan_s)} a step ({scan_s / step_s:.2f}x the step)"
            )
        total = why["op_ms_per_step"]
        parts.append(f"XLA's operations {total:.2f} ms a step: {format_ops(why['ops'], total)}")
        ratio = r["ratios"]["eager_over_step"]
        lines.append(f"- {case_label(r)} ({ratio:.2f}x): " + "; ".join(parts) + ".")
    return [*lines, ""]


def plot_ratios(result: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of the speed-ups per case (log scale, 1x marked), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["cases"]
    series = [("eager_over_step", "torch eager / Flax step")]
    if any("compile_over_step" in r["ratios"] for r in rows):
        series.append(("compile_over_step", "torch.compile / Flax step"))
    series.append(("eager_over_scan", "torch eager / Flax scan"))
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.7 * len(rows) + 2), 5))
    for i, (key, label) in enumerate(series):
        values = [r["ratios"].get(key, np.nan) for r in rows]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("torch time / Flax time (log scale; > 1: Flax faster)")
    ax.set_xticks(x, [case_label(r) for r in rows], rotation=60, ha="right", fontsize=8)
    machine = result["machine"]
    ax.set_title(
        f"funcmod bench: {machine['cpu']}, {machine['cores']} cores, JAX {machine['backend']}",
        pad=28,
    )
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(result: dict[str, Any], outdir: str | Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` into ``outdir`` (created)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": outdir / "bench.json", "markdown": outdir / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(result))
    paths["png"] = plot_ratios(result, outdir / "bench.png")
    return paths
