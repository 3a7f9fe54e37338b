"""funcmod.nn.conv_tune: the measured plan is each pass's fastest lowering by the timer's
numbers, it is measured once per convolution (in memory and in a file, on this machine only),
its measurements run even when called from inside a trace, and the traced convolution takes
it. Timers here are fakes that rank the lowerings: speed itself is `funcmod bench`'s."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from funcmod.nn.conv import Plan, conv_general_dilated, conv_plan, plan_source
from funcmod.nn.conv_tune import (
    PASSES,
    PlanCache,
    candidate_lowerings,
    machine_key,
    measure_plan,
    tuned_plans,
)
from funcmod.precision import x64_for

NHWC = ("NHWC", "HWIO", "NHWC")
# A 3x3, 16 -> 16 convolution on 16x16, batch 8: the rule lowers it with lax but for the kernel
# gradient (chunked, in one chunk: patches)
X, K = (8, 16, 16, 16), (3, 3, 16, 16)


def _spec(x_shape=X, k_shape=K, groups=1):
    chosen = conv_plan(
        jax.ShapeDtypeStruct(x_shape, jnp.float32),
        jax.ShapeDtypeStruct(k_shape, jnp.float32),
        (1, 1),
        ((1, 1), (1, 1)),
        None,
        None,
        NHWC,
        groups,
    )
    assert chosen is not None
    return chosen


def _ranking_timer(order, calls_seen=None):
    """A timer that runs each call once (checking it returns concrete arrays) and times the
    lowerings by their place in ``order`` (first fastest), per pass."""

    def timer(calls):
        times = {}
        for name, (fn, args) in calls.items():
            out = jax.block_until_ready(fn(*args))
            assert isinstance(out, jax.Array) and not isinstance(out, jax.core.Tracer), name
            pass_, lowering = name.split(":")
            times[name] = float(order[pass_].index(lowering) + 1)
        if calls_seen is not None:
            calls_seen.append(sorted(calls))
        return times

    return timer


PATCHES_FIRST = {p: ["patches", "direct", "depthwise", "lax"] for p in PASSES}


def test_measure_plan_takes_each_pass_fastest_lowering():
    spec, rule = _spec()
    assert rule == Plan("lax", "lax", "chunked")
    order = {
        "forward": ["patches", "lax"],
        "input_grad": ["lax", "patches"],
        "kernel_grad": ["patches", "lax"],
    }
    seen = []
    plan, times = measure_plan(X, K, spec, timer=_ranking_timer(order, seen))
    assert plan == Plan("patches", "lax", "patches")
    assert set(times) == set(PASSES) and all(set(t) == {"lax", "patches"} for t in times.values())
    assert seen == [sorted(f"{p}:{n}" for p in PASSES for n in ("lax", "patches"))]


def test_candidates_are_the_valid_lowerings_direct_only_for_few_taps_chunked_if_it_splits():
    spec, _ = _spec()
    assert candidate_lowerings(X, K, spec) == ("lax", "patches")  # 144 taps: no direct sum
    rgb = (2, 8, 8, 3)
    spec, _ = _spec(rgb, (3, 3, 3, 8))
    assert candidate_lowerings(rgb, (3, 3, 3, 8), spec) == ("lax", "direct", "patches")
    big = (64, 64, 64, 3)  # 4096 outputs * 27 taps per image: 4 images per chunk
    spec, _ = _spec(big, (3, 3, 3, 8))
    valid = ("lax", "direct", "patches", "chunked")
    assert candidate_lowerings(big, (3, 3, 3, 8), spec) == valid
    spec, _ = _spec(X, (3, 3, 1, 16), groups=16)
    assert candidate_lowerings(X, (3, 3, 1, 16), spec) == ("lax", "depthwise")


def test_measuring_a_float64_convolution_times_float64_arrays():
    """The measuring thread runs in the caller's 64-bit mode (JAX sets it per thread)."""
    dtypes = set()

    def timer(calls):
        dtypes.update(str(a.dtype) for _, args in calls.values() for a in args)
        return {name: 1.0 for name in calls}

    with x64_for(jnp.float64):
        x, k = jnp.ones(X, jnp.float64), jnp.ones(K, jnp.float64)
        with tuned_plans(timer=timer) as cache:
            jax.jit(lambda x, k: _conv(x, k)).lower(x, k)
    assert dtypes == {"float64"} and cache.measured == 1
    assert json.loads(next(iter(cache.plans)))[-1] == "float64"


def test_a_timer_missing_a_call_is_an_error():
    spec, _ = _spec()
    with pytest.raises(ValueError, match=r"no time for \['forward:lax'"):
        measure_plan(X, K, spec, timer=lambda calls: {})


def _conv(x, k):
    return conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _forward_jaxpr(x, k):
    # a new function each time: JAX caches the trace of a function it has traced before, and
    # a cached trace keeps the plans it was traced with
    return str(jax.make_jaxpr(lambda x, k: _conv(x, k))(x, k))


def test_a_plan_source_replaces_the_rule_and_is_checked():
    """The forward pass as patches is a dot_general in the jaxpr; the rule's lax is not."""
    x, k = jnp.ones(X), jnp.ones(K)
    assert "dot_general" not in _forward_jaxpr(x, k)
    with plan_source(lambda lhs, rhs, spec, rule: Plan("patches", "lax", "lax")):
        assert "dot_general" in _forward_jaxpr(x, k)
    with (
        plan_source(lambda lhs, rhs, spec, rule: Plan("depthwise", "lax", "lax")),
        pytest.raises(ValueError, match=r"\['depthwise'\] cannot compute"),
    ):
        _forward_jaxpr(x, k)
    assert "dot_general" not in _forward_jaxpr(x, k)  # the context closed


def test_tuned_plans_measure_once_inside_a_trace_and_apply():
    """The first trace of a jitted gradient measures the convolution (its timed calls run:
    the fake timer checks they return arrays, not tracers) and lowers it with the measured
    plan; a second function of the same convolution reuses the cached plan."""
    x, k = jnp.ones(X), jnp.ones(K)
    seen = []
    with tuned_plans(timer=_ranking_timer(PATCHES_FIRST, seen)) as cache:
        dk = jax.jit(jax.grad(lambda x, k: _conv(x, k).sum(), argnums=1))(x, k)
        assert "dot_general" in _forward_jaxpr(x, k)
    assert cache.measured == 1 and len(seen) == 1 and len(cache) == 1
    assert list(cache.plans.values()) == [Plan("patches", "patches", "patches")]

    def lax_sum(k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, precision="highest"
        ).sum()

    assert jnp.allclose(dk, jax.grad(lax_sum)(k), rtol=1e-5)


def test_plan_cache_file_round_trip_and_other_machines(tmp_path):
    path = tmp_path / "plans" / "conv.json"
    spec, _ = _spec()
    cache = PlanCache(path)
    assert len(cache) == 0 and not path.exists()
    plan = cache.plan(X, K, spec, jnp.float32, timer=_ranking_timer(PATCHES_FIRST))
    assert plan == Plan("patches", "patches", "patches") and cache.measured == 1
    data = json.loads(path.read_text())
    assert data["format"] == "funcmod.conv_plans/1" and data["machine"] == machine_key()
    assert list(data["plans"].values()) == [["patches", "patches", "patches"]]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    def refuse(calls):
        raise AssertionError("a cached plan was measured again")

    again = PlanCache(path)
    assert again.plan(X, K, spec, jnp.float32, timer=refuse) == plan and again.measured == 0
    # another dtype is another convolution
    with pytest.raises(AssertionError, match="measured again"):
        again.plan(X, K, spec, jnp.float16, timer=refuse)

    data["machine"] = "another CPU"
    path.write_text(json.dumps(data))
    assert len(PlanCache(path)) == 0  # measured elsewhere: not trusted here
    for bad in ({"plans": []}, {**data, "plans": {"k": ["lax", "fft", "lax"]}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="not a convolution plan cache"):
            PlanCache(path)
