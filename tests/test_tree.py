"""compare_trees, assert_trees_close and count_params (no torch needed)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from funcmod.tree import (
    LeafDiff,
    assert_trees_close,
    compare_trees,
    count_params,
    leaves_with_paths,
)


def _one(actual, expected, **kw):
    (d,) = compare_trees({"a": np.asarray(actual)}, {"a": np.asarray(expected)}, **kw)
    return d


def test_paths_name_every_leaf_in_expected_order():
    expected = {
        "params": {"linear2": {"kernel": np.ones((2, 2))}, "linear1": {"bias": np.ones(3)}},
        "x": [np.ones(1), np.ones(2)],
    }
    diffs = compare_trees(expected, expected, rtol=0.0)
    assert [d.path for d in diffs] == list(leaves_with_paths(expected))
    assert {d.path for d in diffs} == {
        "params/linear1/bias",
        "params/linear2/kernel",
        "x/0",
        "x/1",
    }
    assert {d.path: d.shape for d in diffs}["params/linear2/kernel"] == (2, 2)
    assert all(d.ok and d.max_abs == 0.0 and d.max_rel == 0.0 for d in diffs)


def test_max_abs_and_relative_error_definition():
    d = _one([1.0, -2.0, 4.5], [1.0, -2.5, 4.0], rtol=1.0)
    assert d.max_abs == 0.5  # max |a - b|
    assert d.max_rel == 0.5 / 4.0  # max |a - b| / max |b|


def test_relative_error_is_against_the_expected_leaf_scale():
    # Element-wise, the second entry is 100% off; against the leaf's scale it is 1e-5.
    d = _one([100.0, 0.002], [100.0, 0.001], rtol=2e-5)
    assert d.max_abs == pytest.approx(0.001, rel=1e-12)
    assert d.max_rel == pytest.approx(0.001 / 100.0, rel=1e-12)
    assert d.ok
    # The scale is the expected tree's, so swapping the arguments changes the relative error.
    swapped = _one([1.0, 2.0], [1.0, 4.0], rtol=1.0)
    assert swapped.max_rel == 2.0 / 4.0
    assert _one([1.0, 4.0], [1.0, 2.0], rtol=1.0).max_rel == 2.0 / 2.0


def test_rtol_boundary():
    # max abs 0.25, scale 1.0: passes at rtol 0.25, fails just below.
    assert _one([0.5, 1.25], [0.5, 1.0], rtol=0.25).ok
    assert not _one([0.5, 1.25], [0.5, 1.0], rtol=0.2499).ok


def test_atol_lets_small_absolute_errors_pass():
    # Reference all zeros: any difference is an infinite relative error.
    d = _one([0.25, 0.0], [0.0, 0.0], rtol=1e-5)
    assert d.max_abs == 0.25
    assert d.max_rel == math.inf
    assert not d.ok
    assert _one([0.25, 0.0], [0.0, 0.0], rtol=1e-5, atol=0.25).ok
    assert not _one([0.25, 0.0], [0.0, 0.0], rtol=1e-5, atol=0.2499).ok


def test_zero_reference_and_zero_error():
    d = _one([0.0, 0.0], [0.0, 0.0], rtol=0.0)
    assert (d.max_abs, d.max_rel, d.ok) == (0.0, 0.0, True)


def test_empty_leaf_is_an_error():
    with pytest.raises(ValueError, match=r"w: leaf of shape \(0, 3\) has no elements"):
        compare_trees({"w": np.zeros((0, 3))}, {"w": np.zeros((0, 3))}, rtol=0.0)


def test_nan_in_both_at_the_same_place_is_equal():
    d = _one([1.0, np.nan], [1.0, np.nan], rtol=0.0)
    assert (d.max_abs, d.max_rel, d.ok) == (0.0, 0.0, True)


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ([1.0, np.nan], [1.0, 2.0]),  # NaN in actual only
        ([1.0, 2.0], [1.0, np.nan]),  # NaN in expected only
        ([np.nan, 2.0], [1.0, np.nan]),  # NaNs at different places
    ],
)
def test_nan_against_a_number_is_an_infinite_error(actual, expected):
    d = _one(actual, expected, rtol=1e-5, atol=1e6)
    assert d.max_abs == math.inf
    assert d.max_rel == math.inf
    assert not d.ok


def test_inf_against_a_number_fails():
    d = _one([1.0, np.inf], [1.0, 2.0], rtol=1e-5, atol=1e6)
    assert not d.ok


def test_equal_infinities_are_equal():
    x = np.array([1.0, np.inf, -np.inf])
    d = _one(x, x, rtol=0.0)
    assert d.ok and d.max_abs == 0.0


def test_shape_mismatch_names_leaf_and_both_shapes():
    with pytest.raises(ValueError) as info:
        compare_trees({"p": {"w": np.zeros((2, 3))}}, {"p": {"w": np.zeros((3, 2))}}, rtol=1e-5)
    msg = str(info.value)
    assert "p/w" in msg
    assert "actual (2, 3)" in msg
    assert "expected (3, 2)" in msg


def test_structure_mismatch_names_leaves_on_each_side():
    actual = {"a": np.zeros(1), "b": np.zeros(1), "c": np.zeros(1)}
    expected = {"a": np.zeros(1), "d": np.zeros(1)}
    with pytest.raises(ValueError) as info:
        compare_trees(actual, expected, rtol=1e-5)
    msg = str(info.value)
    assert "only in actual ['b', 'c']" in msg
    assert "only in expected ['d']" in msg


def test_jax_and_numpy_leaves_and_dtypes_compare():
    a = {"w": jnp.asarray([1.0, 2.0], dtype=jnp.float32)}
    b = {"w": np.asarray([1.0, 2.0], dtype=np.float32)}
    (d,) = compare_trees(a, b, rtol=0.0)
    assert d.ok
    assert isinstance(d, LeafDiff)
    assert d.to_dict() == {"path": "w", "shape": (2,), "max_abs": 0.0, "max_rel": 0.0, "ok": True}


def test_assert_trees_close_names_only_failing_leaves():
    expected = {"good": np.array([1.0, 2.0]), "bad": np.array([1.0, 4.0]), "z": np.zeros(2)}
    actual = {"good": np.array([1.0, 2.0]), "bad": np.array([1.0, 5.0]), "z": np.ones(2)}
    with pytest.raises(AssertionError) as info:
        assert_trees_close(actual, expected, rtol=1e-3, what="grads")
    msg = str(info.value)
    assert msg.startswith("grads: 2 of 3 leaves differ (rtol=0.001, atol=0.0)")
    assert "bad (2,): max abs 1.000e+00, max rel 2.500e-01" in msg
    assert "z (2,): max abs 1.000e+00, max rel inf" in msg
    assert "good" not in msg


def test_assert_trees_close_returns_diffs_when_close():
    tree = {"a": np.array([1.0, 2.0]), "b": np.array(3.0)}
    near = {"a": np.array([1.0, 2.0 + 1e-9]), "b": np.array(3.0)}
    diffs = assert_trees_close(near, tree, rtol=1e-8)
    assert [d.path for d in diffs] == ["a", "b"]
    assert diffs[0].max_abs > 0.0
    with pytest.raises(AssertionError, match="1 of 2 leaves"):
        assert_trees_close(near, tree, rtol=1e-10)


def test_count_params():
    variables = {
        "params": {"dense": {"kernel": np.zeros((10, 5)), "bias": np.zeros(5)}, "s": np.zeros(())},
        "batch_stats": {"mean": np.zeros(7), "var": np.zeros(7)},
    }
    assert count_params(variables) == 10 * 5 + 5 + 1  # batch statistics are not parameters
    assert count_params(variables["params"]) == 10 * 5 + 5 + 1  # a bare params tree
    assert count_params({"w": jnp.zeros((2, 3))}) == 6
    assert count_params({}) == 0


def test_count_params_reads_params_of_a_frozen_dict():
    from flax.core import FrozenDict

    variables = FrozenDict({"params": {"a": np.zeros(3)}, "batch_stats": {"m": np.zeros(3)}})
    assert count_params(variables) == 3
