"""Every script in comparisons/ runs, end to end, with tiny settings, so that none of them rots."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from funcmod.articles import EXAMPLES
from funcmod.tools.show import script_name

COMPARISONS = Path(__file__).resolve().parents[1] / "comparisons"
# Tiny: 2 training steps on 8x8 images, one timed round of a few steps at batch 4.
TINY = ["--steps", "2", "--batch", "2", "--image-size", "8", "--bench-batch", "4"]
TINY += ["--rounds", "1", "--min-time", "0.001"]


def test_script_names_are_snake_case_of_the_class():
    assert script_name("MLP") == "mlp.py"
    assert script_name("SimpleCNN") == "simple_cnn.py"
    assert script_name("SequentialModel") == "sequential_model.py"
    assert script_name("MultiplyByTwo") == "multiply_by_two.py"


def test_one_script_per_example_and_a_readme():
    missing = [script_name(n) for n in EXAMPLES if not (COMPARISONS / script_name(n)).is_file()]
    assert not missing, f"comparisons/ lacks {missing}"
    readme = (COMPARISONS / "README.md").read_text()
    undocumented = [script_name(n) for n in EXAMPLES if script_name(n) not in readme]
    assert not undocumented, f"comparisons/README.md does not mention {undocumented}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_comparison_script_runs(name, capsys, monkeypatch):
    path = COMPARISONS / script_name(name)
    monkeypatch.setattr(sys, "argv", [str(path), *TINY])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    # The two sources, one after the other, labelled.
    twin = out.index(f"PyTorch twin: funcmod.articles.torch_models.{name}")
    port = out.index(f"Flax port: funcmod.articles.models.{name}")
    assert twin < port
    assert f"class {name}(nn." in out[twin:port]  # nn.Module, or nn.Sequential for one twin
    assert f"class {name}(nn.Module):" in out[port:]
    # Parity in both dtypes, training for the trainable ones, and the timing.
    assert f"{name} [float32] PASS" in out and f"{name} [float64] PASS" in out
    trained = [f"{name} adam [float32] PASS", f"{name} adam [float64] PASS"]
    assert all((t in out) == EXAMPLES[name].trainable for t in trained)
    kind = "one training step" if EXAMPLES[name].trainable else "one forward pass"
    assert f"timing: {kind}" in out and "torch / Flax = " in out
    assert out.rstrip().endswith(f"{name}: PASS")


def test_show_returns_a_summary_without_timing():
    from funcmod.tools.show import show

    with open(Path("/dev/null"), "w") as sink:
        summary = show("MLP", steps=2, batch=2, timing=False, file=sink)
    assert summary["ok"] is True
    assert set(summary["parity"]) == set(summary["training"]) == {"float32", "float64"}
    assert summary["timing"] is None


def test_show_rejects_an_unknown_example():
    from funcmod.tools.show import show

    with pytest.raises(ValueError, match="NoSuchModel"):
        show("NoSuchModel")
