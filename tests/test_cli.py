"""`funcmod compare`: the table, the JSON, and the exit status."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from funcmod.articles import EXAMPLES
from funcmod.tools.cli import main


@pytest.mark.slow
def test_compare_json_covers_every_example_in_both_dtypes(capsys):
    assert main(["compare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert [row["example"] for row in out["examples"]] == list(EXAMPLES)
    for row in out["examples"]:
        assert row["params_flax"] == row["params_torch"]
        assert set(row["parity"]) == {"float32", "float64"}
        for dt, p in row["parity"].items():
            assert p["ok"], (row["example"], dt, p)
            assert p["forward_max_rel"] <= p["rtol"] and p["grad_max_rel"] <= p["rtol"]
            assert {leaf["path"] for leaf in p["leaves"]} >= {"output", "x"}


def test_compare_table_names_examples_and_result(capsys):
    assert main(["compare", "MLP", "SimpleCNN", "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    assert "MLP" in out and "SimpleCNN" in out
    assert "2 of 2 examples pass" in out
    assert "f64" not in out


def test_compare_unknown_example_exits_2(capsys):
    assert main(["compare", "NoSuchModel"]) == 2
    assert "NoSuchModel" in capsys.readouterr().err


def test_compare_exit_status_is_1_when_parity_fails(capsys, monkeypatch):
    from funcmod.articles import checks

    real = checks.check_example

    def tight(*args, **kwargs):  # a real report, judged against an impossible tolerance
        report = real(*args, **kwargs)
        forward = [type(d)(d.path, d.shape, d.max_abs, d.max_rel, False) for d in report.forward]
        return type(report)(report.name, report.dtype, 0.0, 0.0, forward, report.grads)

    monkeypatch.setattr(checks, "check_example", tight)
    assert main(["compare", "MLP", "--dtypes", "float32"]) == 1
    assert "FAIL" in capsys.readouterr().out
