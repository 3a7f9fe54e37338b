"""``funcmod bench --corpus`` (funcmod.tools.bench.corpus): one ported corpus model timed as a
jitted Flax step against torch eager; bad names refused before any work."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from funcmod.tools.bench.corpus import (
    CorpusBenchConfig,
    render_corpus_markdown,
    run_corpus_bench,
)
from funcmod.tools.cli import main


@pytest.mark.slow  # a port, a compile and the timing: 10 s idle, 35 s on a busy machine
def test_one_model_row():
    config = CorpusBenchConfig(models=("weightnorm_mlp",), rounds=2, min_time=0.001,
                               torch_compile=False)  # fmt: skip
    result = run_corpus_bench(config)
    [row] = result["rows"]
    assert row["model"] == "weightnorm_mlp"
    assert set(row["median_s"]) == set(row["compile_s"]) == {"flax_step", "torch_eager"}
    assert all(v > 0 for v in [*row["median_s"].values(), *row["compile_s"].values()])
    assert result["machine"]["backend"] and result["started"] and result["wall_s"] > 0
    assert set(result) >= {"load_before", "load_after"}
    md = render_corpus_markdown(result)
    assert md.count("\n") == 3 and "| weightnorm_mlp |" in md
    json.dumps(result)  # JSON-able


def test_cli_refuses_unknown_models(capsys):
    assert main(["bench", "--corpus", "alexnet"]) == 2
    assert "unknown corpus models ['alexnet']" in capsys.readouterr().err
