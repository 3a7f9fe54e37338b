"""The speed targets funcmod holds itself to, checked against a bench result.

They are reported, never enforced: ``funcmod bench`` exits 0 whether or not they are met, and
no test asserts a speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from funcmod.tools.bench.config import JAX_VARIANTS, case_label

__all__ = [
    "MAX_FIRST_CALL_S",
    "MAX_OVERHEAD",
    "SMALL_MODEL_BATCH",
    "SMALL_MODEL_SPEEDUP",
    "TARGETS",
    "evaluate_targets",
]

# (key, description), in the order evaluate_targets reports them.
TARGETS = (
    ("step_beats_eager", "jitted Flax step faster than torch eager in every case"),
    ("small_5x_eager", "jitted Flax step >= 5x faster than torch eager, small models, batch 32"),
    ("step_beats_compile", "jitted Flax step faster than torch.compile in every case"),
    ("overhead_5pct", "funcmod step within 5% of the hand-written pure-JAX step"),
    ("bound_overhead_5pct", "funcmod bound step within 5% of the hand-written pure-JAX step"),
    ("compile_2s", "first call (trace + compile) of every jitted step under 2 s"),
)
SMALL_MODEL_SPEEDUP = 5.0
MAX_OVERHEAD = 0.05
MAX_FIRST_CALL_S = 2.0
SMALL_MODEL_BATCH = 32


def _ratio_values(rows: list[dict[str, Any]], key: str) -> list[tuple[float, str]]:
    return [(r["ratios"][key], case_label(r)) for r in rows if key in r["ratios"]]


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the result (only its ``cases`` are read) against ``TARGETS``.

    Returns:
      one dict per target: ``target``, ``description``, ``threshold``, ``ok`` (None when no case
      measures it), ``worst`` (the value furthest from the target) with ``worst_case``, and
      ``failing``, the cases that miss it.
    """
    rows = result["cases"]
    checks: dict[str, tuple[list[tuple[float, str]], float, Callable[[float], bool], bool]] = {
        # key: ((value, case label) pairs, threshold, passes(value), higher_is_better)
        "step_beats_eager": (
            _ratio_values(rows, "eager_over_step"),
            1.0,
            lambda v: v > 1.0,
            True,
        ),
        "small_5x_eager": (
            _ratio_values(
                [r for r in rows if r["small"] and r["batch"] == SMALL_MODEL_BATCH],
                "eager_over_step",
            ),
            SMALL_MODEL_SPEEDUP,
            lambda v: v >= SMALL_MODEL_SPEEDUP,
            True,
        ),
        "step_beats_compile": (
            _ratio_values(rows, "compile_over_step"),
            1.0,
            lambda v: v > 1.0,
            True,
        ),
        "overhead_5pct": (
            _ratio_values(rows, "step_overhead"),
            MAX_OVERHEAD,
            lambda v: v <= MAX_OVERHEAD,
            False,
        ),
        "bound_overhead_5pct": (
            _ratio_values(rows, "bound_overhead"),
            MAX_OVERHEAD,
            lambda v: v <= MAX_OVERHEAD,
            False,
        ),
        "compile_2s": (
            [
                (r["variants"][name]["first_call_s"], f"{case_label(r)} {name}")
                for r in rows
                for name in JAX_VARIANTS
                if name in r["variants"]
            ],
            MAX_FIRST_CALL_S,
            lambda v: v < MAX_FIRST_CALL_S,
            False,
        ),
    }
    out = []
    for key, description in TARGETS:
        values, threshold, passes, higher_is_better = checks[key]
        entry: dict[str, Any] = {"target": key, "description": description}
        entry["threshold"] = threshold
        if not values:
            entry.update(ok=None, worst=None, worst_case=None, failing=[])
        else:
            value, label = min(values) if higher_is_better else max(values)
            failing = [label for v, label in values if not passes(v)]
            entry.update(ok=not failing, worst=value, worst_case=label, failing=failing)
        out.append(entry)
    return out
