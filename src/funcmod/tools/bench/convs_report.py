"""The markdown report of ``funcmod bench --convs`` (``funcmod.tools.bench.convs``'s result):
one table row per convolution, each lowering's per-pass times with the rule's pick in bold,
and how often the rule's pick was the fastest, within ``NOISE`` and within each row's repeat
spread."""

from __future__ import annotations

import statistics
from typing import Any

from funcmod.tools.bench.convs import MAX_TIMED_DIRECT_TAPS, NOISE, PASSES
from funcmod.tools.bench.timing import format_seconds

__all__ = ["render_conv_markdown"]

# The lowerings with a column in the markdown table, in its order.
TABLE_LOWERINGS = ("lax", "direct", "depthwise", "patches", "chunked")


def _misses(picks: dict[str, Any], *, beyond_repeat: bool = False) -> list[str]:
    """The passes whose pick is not within ``NOISE`` of the fastest (with ``beyond_repeat``:
    not within the row's repeat spread either), as ``'dk: lax (1.40x; repeat 1.05x)'``."""
    return [
        f"{p}: {v['fastest']} ("
        + (
            "its pick not timed"
            if v["rule_over_fastest"] is None
            else f"{v['rule_over_fastest']:.2f}x"
        )
        + f"; repeat {1 + v['repeat_spread']:.2f}x)"
        for p, v in picks.items()
        if not v["ok"] and not (beyond_repeat and v["within_repeat"])
    ]


def _cell(times: dict[str, float], name: str, chosen: bool) -> str:
    if name not in times:
        return "-"
    text = format_seconds(times[name])
    return f"**{text}**" if chosen else text


def render_conv_markdown(result: dict[str, Any]) -> str:
    """The conv bench as markdown: per row the median forward + backward of torch eager, lax
    and the rule's plan, each lowering's per-pass times (the rule's pick in bold), and the
    ratios; then how often the rule picked the fastest lowering of a pass."""
    m = result["machine"]
    tuned = any("tuned_plan" in r for r in result["rows"])
    lines = [
        f"Conv grid measured {result['started']} on {m['cpu']} ({m['cores']} cores), JAX "
        f"`{m['backend']}`, jax {m['versions']['jax']}, torch {m['versions']['torch']}; load "
        f"average before / after: {result['load_before']} / {result['load_after']}. Medians "
        f"over {result['config']['rounds']} interleaved rounds, float32.",
        "",
        "| conv | plan (fwd/dx/dk) | torch fwd+bwd | lax fwd+bwd | rule fwd+bwd | torch / rule "
        "| lax / rule | lax fwd/dx/dk | direct fwd/dx/dk | depthwise fwd/dx/dk | "
        "patches fwd/dx/dk | chunked fwd/dx/dk | rule fastest? | "
        + ("tuned plan: fastest? | " if tuned else "")
        + "slower than torch: why (XLA cost analysis) |",
        "|" + "---|" * (15 if tuned else 14),
    ]
    missed = tuned_missed = beyond_repeat = 0
    for r in result["rows"]:
        t, plan = r["times"], r["plan"]
        per = []
        for name in TABLE_LOWERINGS:
            if name in r["same_as"]:
                per.append(f"= {r['same_as'][name]}" + (" (picked)" if name in plan else ""))
            elif name not in r["lowerings"]:
                per.append("-")
            else:
                per.append(
                    " / ".join(
                        _cell(t, f"{name}:{p}", plan[i] == name) for i, p in enumerate(PASSES)
                    )
                )
        bad = _misses(r["picks"])
        missed += bool(bad)
        beyond_repeat += bool(_misses(r["picks"], beyond_repeat=True))
        cells = [
            r["label"],
            "/".join(plan),
            format_seconds(t["torch:fwd+bwd"]),
            format_seconds(t["lax:fwd+bwd"]),
            format_seconds(t["rule:fwd+bwd"]),
            f"{r['torch_over_rule']:.2f}x",
            f"{r['lax_over_rule']:.2f}x",
            *per,
            "yes" if not bad else "no: " + ", ".join(bad),
        ]
        if tuned:
            tuned_bad = _misses(r["tuned_picks"]) if "tuned_picks" in r else ["-"]
            tuned_missed += bool(tuned_bad)
            verdict = "yes" if not tuned_bad else "no: " + ", ".join(tuned_bad)
            cells.append(f"{'/'.join(r.get('tuned_plan', ['-']))}: {verdict}")
        cells.append(r["why_slower"] or "-")
        lines.append("| " + " | ".join(cells) + " |")
    n = len(result["rows"])
    spreads = sorted(v["repeat_spread"] for r in result["rows"] for v in r["picks"].values())
    lines += [
        "",
        f"Rule's pick within {NOISE:.0%} of the fastest lowering in every pass: "
        f"{n - missed} of {n} rows; within the spread of its own repeat timing where not within "
        f"{NOISE:.0%}: {n - beyond_repeat} of {n} (the rule's pick of each pass timed twice in "
        f"the same rounds, as two jitted copies of one program, measured "
        f"{statistics.median(spreads):.0%} apart at the median and up to {spreads[-1]:.0%})"
        + (
            f"; the tuned plan's (measured before, by funcmod.nn.conv_tune): {n - tuned_missed} "
            f"of {n}"
            if tuned
            else ""
        )
        + ". Ratios above 1: the rule's plan is faster. Per-lowering "
        "cells: forward, input gradient alone, kernel gradient alone; the rule's pick in bold; "
        f"'-': not valid for the shape (direct: groups=1 and at most {MAX_TIMED_DIRECT_TAPS} "
        "taps timed; depthwise: groups == C_in; patches and chunked: groups=1); '= patches': "
        "chunked is patches' program here (one chunk holds the whole batch), timed once.",
    ]
    return "\n".join(lines) + "\n"
