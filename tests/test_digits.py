"""The digits examples on a tiny configuration: both frameworks learn, agree, and repeat."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from funcmod.articles.digits import DigitsConfig, train_and_evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_digits_trains_both_frameworks_in_step(model, tmp_path):
    config = DigitsConfig(
        model=model, hidden=16, epochs=2, batch_size=64, learning_rate=1e-2, progress=False
    )
    result = train_and_evaluate(config, tmp_path)
    assert result["steps"] == 2 * (1438 // 64)  # 1438 training digits, last batch dropped
    assert len(result["torch_losses"]) == len(result["flax_losses"]) == result["steps"]
    # Both learn: well above chance (0.1) after two epochs, and the loss falls.
    assert result["torch_accuracy"] > 0.5 and result["flax_accuracy"] > 0.5
    assert result["flax_losses"][-1] < 0.5 * result["flax_losses"][0]
    # ... and they learn the same thing: float32 rounding only, over every step.
    assert abs(result["torch_accuracy"] - result["flax_accuracy"]) <= 1 / 359  # one test digit
    assert result["loss_max_abs_diff"] < 1e-5
    assert result["final_param_max_rel"] < 1e-4
    assert (tmp_path / f"digits_{model}_loss.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((tmp_path / f"digits_{model}.json").read_text())
    assert saved["flax_accuracy"] == result["flax_accuracy"]


def test_digits_jax_run_repeats_bitwise(tmp_path):
    config = DigitsConfig(model="mlp", hidden=16, epochs=1, batch_size=64, progress=False)
    first = train_and_evaluate(config, tmp_path / "a")
    second = train_and_evaluate(config, tmp_path / "b")
    np.testing.assert_array_equal(first["flax_losses"], second["flax_losses"])
    assert first["flax_accuracy"] == second["flax_accuracy"]


def test_digits_rejects_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="'mlp' or 'cnn'"):
        train_and_evaluate(DigitsConfig(model="resnet"), tmp_path)


@pytest.mark.slow
def test_example_scripts_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "digits_mlp.py"
    out = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--hidden", "8", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["steps"] == 1438 // 32 and summary["config"]["hidden"] == 8
    assert (tmp_path / "digits_mlp_loss.png").exists()
