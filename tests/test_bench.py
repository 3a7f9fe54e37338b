"""funcmod bench: the machinery on tiny cases. Structure and arithmetic only: speed is measured by
`funcmod bench`, never asserted in a test."""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")

from funcmod.tools import bench
from funcmod.tools.bench import BenchConfig, Case, CompileCounter
from funcmod.tools.bench import command as bench_command

# One round of a few steps, torch at one thread, a small matmul for the peak.
TINY = {
    "rounds": 2,
    "min_time": 0.001,
    "max_steps": 3,
    "warmup": 1,
    "scan_steps": 2,
    "torch_compile": False,
    "torch_threads": (1,),
    "matmul_size": 64,
}


@pytest.fixture(scope="module")
def mlp_row():
    config = BenchConfig(examples=("MLP",), **TINY)
    return bench.bench_case(Case("MLP", 4), config)


def test_bench_case_structure_and_positive_timings(mlp_row):
    row = mlp_row
    assert (row["example"], row["batch"], row["image_size"], row["small"]) == ("MLP", 4, None, True)
    assert set(row["variants"]) == {
        "flax_step",
        "flax_bound",
        "flax_scan",
        "pure_jax",
        "torch_eager_t1",
    }
    assert row["best_torch"] == {"torch_eager": "torch_eager_t1"}
    assert row["flops"] > 0
    assert row["scan_steps"] == 2
    for name, v in row["variants"].items():
        assert v["step_s"] > 0 and v["first_call_s"] > 0, name
        lo, hi = v["step_s_quartiles"]
        assert 0 < lo <= v["step_s"] <= hi, name
        assert v["steps_per_measurement"] % v["steps_per_call"] == 0, name
        assert v["gflops"] == pytest.approx(row["flops"] / v["step_s"] / 1e9), name
    assert set(row["variants"]["flax_step"]["first_call_detail_s"]) == {
        "trace_s",
        "lower_s",
        "xla_compile_s",
    }
    assert row["recompiles"] == 0  # the timed rounds reuse the compiled steps


def test_ratios_are_ratios_of_the_medians(mlp_row):
    t = {name: v["step_s"] for name, v in mlp_row["variants"].items()}
    r = mlp_row["ratios"]
    assert r["eager_over_step"] == pytest.approx(t["torch_eager_t1"] / t["flax_step"])
    assert r["eager_over_scan"] == pytest.approx(t["torch_eager_t1"] / t["flax_scan"])
    assert r["step_overhead"] == pytest.approx(t["flax_step"] / t["pure_jax"] - 1)
    assert r["bound_overhead"] == pytest.approx(t["flax_bound"] / t["pure_jax"] - 1)
    assert "compile_over_step" not in r  # torch.compile was not run


def test_image_case_uses_the_image_size():
    config = BenchConfig(examples=("SimpleCNN",), **{**TINY, "rounds": 1})
    row = bench.bench_case(Case("SimpleCNN", 2, 8), config)
    assert row["image_size"] == 8 and row["small"] is False
    # forward and kernel gradient of a 3x3, 3 -> 16 convolution at least: 2 * 2 * (2*8*8*16*27)
    assert row["flops"] >= 4 * 2 * 8 * 8 * 16 * 27


def test_default_cases_cover_every_trainable_example_at_both_batches():
    config = BenchConfig(torch_compile=False)
    cases = bench.default_cases(config)
    labels = {(c.example, c.batch, c.image_size) for c in cases}
    assert ("SimpleCNN", 32, 32) in labels and ("SimpleCNN", 256, 64) in labels
    assert ("SimpleConvNet", 256, 64) in labels and ("MLP", 256, None) in labels
    assert {c.example for c in cases} == set(config.examples)
    assert len(config.examples) == 8 and len(cases) == 18


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"examples": ("SimpleAdder",)}, "no parameters"),
        ({"examples": ("Nope",)}, "unknown examples"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"batch_sizes": (0,)}, "batch_sizes"),
        ({"jax_variants": ("flax_fast",)}, "jax_variants"),
        ({"torch_threads": (0,)}, "torch_threads"),
    ],
)
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


def test_jitted_steps_do_not_recompile_on_a_second_call():
    """The bench times calls 2..n of each jitted step: they must reuse the first compile."""
    import optax

    from funcmod.articles.catalog import EXAMPLES
    from funcmod.train import create_train_state

    model = EXAMPLES["MLP"].flax_module()
    x, y = jnp.ones((4, 10)), jnp.ones((4, 2))
    variables = model.init(jax.random.key(0), x)
    tx = optax.sgd(0.1)
    state = create_train_state(model, variables, tx)
    epoch_state = create_train_state(model, variables, tx)
    params = jax.tree.map(jnp.array, variables["params"])
    opt_state = tx.init(params)
    stacked = (jnp.stack([x, x]), jnp.stack([y, y]))
    steps = bench.jitted_steps()
    assert bench.jitted_steps() is steps  # built once
    for call in (1, 2):
        with CompileCounter() as counter:
            state, _ = steps.train_step(state, (x, y))
            epoch_state, _ = steps.train_epoch(epoch_state, stacked)
            params, opt_state, loss = steps.pure_step(model.apply, tx, params, opt_state, (x,), y)
            jax.block_until_ready(loss)
        if call == 1:
            assert counter.compiles >= 3
        else:
            assert counter.compiles == 0


def _fake_row(
    example, batch, small, eager, step, compile_=None, overhead=0.0, bound=0.0, first=0.5
):
    ratios = {"eager_over_step": eager / step, "step_overhead": overhead, "bound_overhead": bound}
    if compile_ is not None:
        ratios["compile_over_step"] = compile_ / step
    variants = {name: {"first_call_s": first} for name in bench.JAX_VARIANTS}
    return {"example": example, "batch": batch, "image_size": None, "small": small,
            "ratios": ratios, "variants": variants}  # fmt: skip


def test_evaluate_targets_names_the_failing_cases():
    rows = [
        _fake_row("MLP", 32, True, eager=6.0, step=1.0, compile_=8.0, bound=0.06),
        _fake_row("MLP", 256, True, eager=3.0, step=1.0, compile_=4.0, overhead=0.08),
        _fake_row("SimpleCNN", 32, False, eager=0.9, step=1.0, compile_=0.5, first=2.5),
    ]
    targets = {t["target"]: t for t in bench.evaluate_targets({"cases": rows})}
    assert set(targets) == {key for key, _ in bench.TARGETS}
    assert targets["step_beats_eager"]["ok"] is False
    assert targets["step_beats_eager"]["failing"] == ["SimpleCNN b32"]
    assert targets["step_beats_eager"]["worst"] == pytest.approx(0.9)
    assert targets["small_5x_eager"]["ok"] is True  # only MLP b32 counts: 6x
    assert targets["step_beats_compile"]["failing"] == ["SimpleCNN b32"]
    assert targets["overhead_5pct"]["failing"] == ["MLP b256"]
    assert targets["bound_overhead_5pct"]["failing"] == ["MLP b32"]
    assert targets["compile_2s"]["ok"] is False
    assert targets["compile_2s"]["worst"] == pytest.approx(2.5)


def test_evaluate_targets_without_torch_compile_is_not_measured():
    rows = [_fake_row("MLP", 32, True, eager=6.0, step=1.0)]
    targets = {t["target"]: t for t in bench.evaluate_targets({"cases": rows})}
    assert targets["step_beats_compile"]["ok"] is None


def test_run_bench_writes_json_markdown_and_png(tmp_path):
    config = BenchConfig(examples=("MultiplyByTwo",), **TINY)
    lines = []
    result = bench.run_bench(config, cases=[Case("MultiplyByTwo", 4)], progress=lines.append)
    assert len(lines) == 1 and lines[0].startswith("MultiplyByTwo b4:")
    assert result["machine"]["backend"] == jax.default_backend()
    assert set(result["machine"]["versions"]) >= {"jax", "jaxlib", "flax", "optax", "torch"}
    peak = result["peak"]
    assert peak["flops"] == 2 * 64**3
    assert peak["peak_gflops"] == max(peak["jax_gflops"], peak["torch_gflops"]) > 0
    (row,) = result["cases"]
    fraction = row["variants"]["flax_step"]["peak_fraction"]
    assert math.isclose(fraction, row["variants"]["flax_step"]["gflops"] / peak["peak_gflops"])
    paths = bench.write_results(result, tmp_path / "results")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["cases"][0]["example"] == "MultiplyByTwo"
    markdown = paths["markdown"].read_text()
    assert "| MultiplyByTwo b4 |" in markdown and "| target | result | worst case |" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_prints_json(capsys):
    from funcmod.tools.cli import main

    argv = ["bench", "MultiplyByTwo", "--batch-sizes", "4", "--rounds", "1", "--min-time", "0"]
    assert main([*argv, "--no-torch-compile", "--torch-threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["example"], r["batch"]) for r in out["cases"]] == [("MultiplyByTwo", 4)]
    assert out["config"]["torch_compile"] is False


def test_cli_bench_rejects_bad_arguments(capsys):
    from funcmod.tools.cli import main

    assert main(["bench", "SimpleAdder", "--no-torch-compile"]) == 2
    assert "no parameters" in capsys.readouterr().err


def _parse_bench(argv):
    """``argv`` parsed by a parser with only ``bench_command.add_parser`` registered."""
    parser = argparse.ArgumentParser(prog="funcmod")
    bench_command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_command_hands_the_bench_a_config(monkeypatch, capsys):
    seen = []

    def fake_run_bench(config, progress=None):
        seen.append(config)
        return {"cases": []}

    monkeypatch.setattr(bench_command, "run_bench", fake_run_bench)  # where run() looks it up
    argv = ["MLP", "--batch-sizes", "4", "8", "--rounds", "3", "--torch-threads", "1"]
    args = _parse_bench([*argv, "--no-torch-compile", "--json"])
    assert args.run is bench_command.run
    assert args.run(args) == 0
    expected = BenchConfig(
        examples=("MLP",), batch_sizes=(4, 8), rounds=3, torch_threads=(1,), torch_compile=False
    )
    assert seen == [expected]
    assert json.loads(capsys.readouterr().out) == {"cases": []}


def test_command_without_torch_exits_2(monkeypatch, capsys):
    args = _parse_bench(["MLP"])
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert args.run(args) == 2
    assert "needs torch" in capsys.readouterr().err


@pytest.mark.slow
def test_torch_compile_variant(tmp_path):
    """torch.compile of the tiniest step (its compile takes seconds): timed and in the ratios."""
    config = BenchConfig(examples=("MultiplyByTwo",), **{**TINY, "torch_compile": True})
    row = bench.bench_case(Case("MultiplyByTwo", 4), config)
    assert row["best_torch"]["torch_compile"] == "torch_compile_t1"
    t = row["variants"]
    assert t["torch_compile_t1"]["first_call_s"] > 0 and t["torch_compile_t1"]["step_s"] > 0
    assert row["ratios"]["compile_over_step"] == pytest.approx(
        t["torch_compile_t1"]["step_s"] / t["flax_step"]["step_s"]
    )


def test_time_interleaved_takes_one_sample_per_round_and_run():
    calls = []
    runs = {"a": lambda n: calls.append(("a", n)), "b": lambda n: calls.append(("b", n))}
    samples = bench.time_interleaved(runs, {"a": 2, "b": 3}, rounds=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(s >= 0 for v in samples.values() for s in v)
    assert calls == [("a", 2), ("b", 3), ("b", 3), ("a", 2), ("a", 2), ("b", 3)]  # rotated
    assert np.all(np.isfinite(samples["a"]))


def test_conv_bench_one_row_structure(tmp_path, capsys):
    """`funcmod bench --convs` on a 1-row grid: every valid lowering's three passes, the rule's
    plan and lax whole, torch; the markdown table and the JSON (structure only, never speed)."""
    from funcmod.nn.conv_rule import RULE_BRANCHES
    from funcmod.tools.bench import convs
    from funcmod.tools.bench.convs_report import render_conv_markdown

    row = convs.ConvRow("tiny", 2, 4, 4, 5, 3, stride=2, groups=4)  # depthwise: 2 lowerings
    one_chunk = convs.ConvRow("tiny", 2, 4, 4, 5, 3)  # groups=1: chunked is patches here
    config = convs.ConvBenchConfig(
        rounds=1, min_time=0.0, max_steps=1, torch_threads=(1,), tune=True
    )
    result = convs.run_conv_bench(config, [row, one_chunk])
    r, r1 = result["rows"]
    # chunked with one chunk is patches' program: timed once, its cells say so
    assert r1["same_as"] == {"chunked": "patches"} and "chunked" not in r1["lowerings"]
    assert r1["lowerings"] == ["direct", "lax", "patches"] and r["same_as"] == {}
    assert all(v["repeat_spread"] >= 0 for v in r1["picks"].values())
    # the measured plan, and its picks judged against the grid's own times
    assert set(r["tuned_plan"]) <= {"depthwise", "lax"}
    assert [v["rule"] for v in r["tuned_picks"].values()] == r["tuned_plan"]
    assert r["label"] == "tiny b2 4->4 5x5 k3 s2 g4"
    assert tuple(r["plan"]) == RULE_BRANCHES["depthwise"]
    assert r["lowerings"] == ["depthwise", "lax"]
    expected = {f"{name}:{p}" for name in r["lowerings"] for p in (*convs.PASSES, "sum")}
    expected |= {"rule:fwd+bwd", "lax:fwd+bwd", "torch:fwd+bwd", "torch_t1:fwd+bwd"}
    expected |= {f"repeat:{p}" for p in convs.PASSES}  # the rule's picks timed again
    assert set(r["times"]) == expected and all(t > 0 for t in r["times"].values())
    assert set(r["picks"]) == set(convs.PASSES)
    for p, pick in r["picks"].items():
        pair = r["times"][f"repeat:{p}"], r["times"][f"{pick['rule']}:{p}"]
        assert pick["repeat_spread"] == pytest.approx(max(pair) / min(pair) - 1)
    cost = r["xla_cost"]
    assert cost["flops"] > 0 and cost["bytes"] > 0 and cost["min_bytes"] > 0
    assert cost["conv_flops"] == 3 * 2 * (2 * 3 * 3 * 4) * 3 * 3  # 3 passes, ct (2, 3, 3, 4)
    slower = r["times"]["rule:fwd+bwd"] > r["times"]["torch:fwd+bwd"]
    assert (r["why_slower"] is not None) == slower
    assert r["torch_over_rule"] == pytest.approx(
        r["times"]["torch:fwd+bwd"] / r["times"]["rule:fwd+bwd"]
    )
    table = render_conv_markdown(result)
    assert "| tiny b2 4->4 5x5 k3 s2 g4 |" in table and "rule fastest?" in table
    assert "| = patches (picked) |" in table and "its own repeat timing" in table
    assert "tuned plan: fastest?" in table and "the tuned plan's" in table
    json.dumps(result)  # JSON-able
    from funcmod.tools.cli import main

    assert main(["bench", "--convs", "--conv-inputs", "64xA"]) == 2
    assert "SIZExBATCH" in capsys.readouterr().err


def test_conv_grid_covers_resnet18_and_mobilenetv3_shapes():
    from funcmod.tools.bench import convs

    rows = convs.default_grid(((64, 2),))
    labels = {r.label() for r in rows}
    assert "resnet18@64:layer4 b2 512->512 2x2 k3 s1" in labels  # the pathological case
    assert "resnet18@64:conv1 b2 3->64 64x64 k7 s2" in labels
    assert any(r.groups == r.c_in > 1 and r.kernel == 5 and r.stride == 2 for r in rows)
    assert any(r.net.startswith("mobilenetv3") and r.kernel == 1 for r in rows)


@pytest.mark.slow
def test_resnet_bench_times_the_same_resnet18_on_both_sides(capsys):
    """`funcmod bench --resnet` at batch 2, 64x64: the Flax ResNet-18 takes the torch twin's
    weights unrenamed (torchvision's ResNet-18 with 10 classes: 11,181,642 parameters), gives its
    logits, and the row's ratio is the ratio of its medians (structure only, never speed).

    Not 32x32: there the last stage's BatchNorm normalises 2 values per channel (2 images of
    1x1), which amplifies rounding about 1e4-fold on both sides alike (logits 6.8e-4 apart in
    float32, 6.1e-13 in float64)."""
    from funcmod.tools.bench import resnet
    from funcmod.tools.cli import main

    twin = resnet.TorchResNet18()
    assert sum(p.numel() for p in twin.parameters()) == 11_181_642
    config = resnet.ResNetBenchConfig(
        batches=(2,), size=64, rounds=1, min_time=0.001, torch_threads=(1,), tune_convs=True
    )
    result = resnet.run_resnet_bench(config)
    (row,) = result["rows"]
    assert row["parity_rel"] <= 1e-5  # float32 train-mode logits against torch's
    t = row["times"]
    assert set(t) == {"flax_step", "flax_tuned", "torch_t1", "torch_eager"}
    assert all(v > 0 for v in t.values())
    assert row["eager_over_step"] == pytest.approx(t["torch_eager"] / t["flax_step"])
    # the tuned step measured each of the ResNet-18's 11 distinct convolutions once
    assert row["tuned_convs"] == len(row["tuned_plans"]) == 11
    assert row["eager_over_tuned"] == pytest.approx(t["torch_eager"] / t["flax_tuned"])
    assert (row["why_slower"] is None) == (row["eager_over_step"] >= 1.0)
    assert row["xla_flops"] > 0 and row["xla_bytes"] > 0
    assert "| ResNet-18 b2 64x64 |" in resnet.render_resnet_markdown(result)
    json.dumps(result)
    assert main(["bench", "--resnet", "--resnet-batches", "0"]) == 2
    assert "batches" in capsys.readouterr().err
    assert main(["bench", "--tune-convs"]) == 2
    assert "--tune-convs applies to --resnet and --convs only" in capsys.readouterr().err


def _jitted_run(fn, *args):
    """``run(n)``: n calls of the jitted ``fn(*args)``, then a block on the last result."""

    def run(n):
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)

    run(1)  # compile outside any profile
    return run


def test_op_profile_counts_each_operation_once_per_step_and_finds_the_heavy_one():
    from funcmod.tools.bench.profile import format_ops, op_kind, op_profile

    a = jnp.ones((512, 512), jnp.float32)
    v = jnp.arange(4.0)
    run = _jitted_run(jax.jit(lambda a, v: (a @ a, v + 1.0)), a, v)
    three, six = op_profile(run, 3), op_profile(run, 6)
    assert three["steps"] == 3 and six["steps"] == 6
    # per step: the same operations, each once, whatever the number of steps traced
    assert {op["op"]: op["count"] for op in three["ops"]} == {
        op["op"]: op["count"] for op in six["ops"]
    }
    assert all(op["count"] == 1 for op in three["ops"]) and len(three["ops"]) >= 2
    assert three["total_ms"] == pytest.approx(sum(op["ms"] for op in three["ops"]))
    heavy = three["ops"][0]  # largest first: the 512^3 matmul, not the 4-element add
    assert heavy["ms"] >= 0.8 * three["total_ms"]
    assert [op["ms"] for op in three["ops"]] == sorted(
        (op["ms"] for op in three["ops"]), reverse=True
    )
    assert format_ops(three["ops"][:1], three["total_ms"]).startswith(f"{heavy['op']} x1 ")
    assert op_kind("pad_slice_fusion.7") == "pad_slice_fusion" and op_kind("dot") == "dot"
    with pytest.raises(RuntimeError, match="no XLA operation"):
        op_profile(lambda n: None, 1)
    with pytest.raises(ValueError, match="at least 1 step"):
        op_profile(run, 0)


def test_page_faults_counts_one_per_fresh_page():
    """8 MB of fresh anonymous memory, huge pages refused, one byte written per 4 KB page:
    2048 faults per step, plus the few the interpreter takes around them."""
    import mmap

    from funcmod.tools.bench.profile import page_faults

    size, page = 8 * 2**20, mmap.PAGESIZE

    def run(n):
        for _ in range(n):
            with mmap.mmap(-1, size) as buf:
                buf.madvise(mmap.MADV_NOHUGEPAGE)
                for offset in range(0, size, page):
                    buf[offset] = 1

    per_step = page_faults(run, 3)
    assert size // page <= per_step < size // page + 100
    with pytest.raises(ValueError, match="at least 1 step"):
        page_faults(run, 0)


def test_a_slower_case_is_explained_in_the_report(mlp_row):
    """``bench_case`` explains a case only when the Flax step is slower than torch eager; the
    explanation's measurements are real (``_why_slower`` on a jitted step), rendered per case."""
    import copy

    from funcmod.tools.bench import report, run
    from funcmod.tools.bench.profile import TOP_OPS
    from funcmod.tools.bench.variants import Variant

    assert (mlp_row["why_slower"] is None) == (mlp_row["ratios"]["eager_over_step"] >= 1.0)
    assert mlp_row["xla_bytes"] > 0
    a = jnp.ones((256, 256), jnp.float32)
    why = run._why_slower(Variant(_jitted_run(jax.jit(lambda a: a @ a), a)), 2)
    assert set(why) == {"page_faults_per_step", "op_ms_per_step", "ops"}
    assert why["page_faults_per_step"] >= 0 and 1 <= len(why["ops"]) <= TOP_OPS
    row = copy.deepcopy(mlp_row)
    row["why_slower"] = why
    row["ratios"]["eager_over_step"] = 0.5
    lines = report._why_slower_lines([row, mlp_row | {"why_slower": None}])
    bullets = [line for line in lines if line.startswith("- ")]
    assert len(bullets) == 1 and bullets[0].startswith("- MLP b4 (0.50x): XLA's step ")
    assert f"{why['ops'][0]['op']} x1 " in bullets[0]
    assert report._why_slower_lines([mlp_row | {"why_slower": None}]) == []
