"""funcmod.trajectory: whole training runs of every trainable example, torch against Flax.

Images are 8x8 here so that the suite stays fast. (At the examples' own sizes, 32x32 and 64x64,
the float32 conv runs with Adam drift past 1e-4 after 100-200 steps: with tens of thousands of
ReLU inputs per step, a few sit within float32 rounding of zero and switch sides between the
two libraries, and Adam's normalised step amplifies the gradient each one changes. The same
runs with tanh instead of ReLU stay below 1e-6; float64 runs stay below 1e-14.)
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import optax  # noqa: E402

from funcmod import trajectory  # noqa: E402
from funcmod.articles.catalog import EXAMPLES  # noqa: E402
from funcmod.articles.checks import check_trajectory  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402

TRAINABLE = sorted(name for name, ex in EXAMPLES.items() if ex.trainable)
OPTIMIZERS = ["sgd", "adam", "adamw"]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", TRAINABLE)
def test_50_steps_stay_in_step(name, optimizer, dtype):
    report = check_trajectory(name, optimizer=optimizer, steps=50, dtype=dtype, image_size=8)
    assert report.rtol == RTOL["trajectory"][np.dtype(dtype)]
    assert report.ok, str(report)
    assert len(report.max_rel_per_step) == len(report.torch_losses) == 50


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "optimizer", "dtype"),
    [
        ("MLP", "adam", np.float32),
        ("MLP", "adam", np.float64),
        ("SimpleCNN", "adamw", np.float32),
        ("CustomModule", "sgd", np.float64),
    ],
)
def test_200_steps_stay_in_step(name, optimizer, dtype):
    report = check_trajectory(name, optimizer=optimizer, steps=200, dtype=dtype, image_size=8)
    assert report.ok, str(report)
    # the runs train, they do not just sit still together: errors of 1e-7 against moves of 1e-2
    assert report.moved > 1e-2


def _groups_nesterov(module):
    return torch.optim.SGD(
        [
            {"params": module.linear1.parameters(), "lr": 0.05, "weight_decay": 1e-3},
            {"params": module.linear2.parameters()},
        ],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
    )


def _amsgrad(module):
    return torch.optim.AdamW(module.parameters(), lr=1e-2, amsgrad=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("make", [_groups_nesterov, _amsgrad], ids=["groups", "amsgrad"])
def test_custom_optimizer_with_clipping(make, dtype):
    report = check_trajectory(
        "MLP", optimizer=make, steps=50, dtype=dtype, max_grad_norm=0.5, seed=1
    )
    assert report.optimizer == make.__name__
    assert report.ok, str(report)


def test_a_wrong_update_rule_is_caught(monkeypatch):
    """The check has teeth: a learning rate off by 0.1% fails it."""
    monkeypatch.setattr(
        trajectory, "from_torch", lambda opt, module, **settings: optax.sgd(0.01001, 0.9)
    )
    report = check_trajectory("MLP", optimizer="sgd", steps=20, dtype=np.float64)
    assert not report.ok
    assert report.max_rel > 1e-6


def test_report_to_dict_is_json():
    report = check_trajectory("SimpleCNN", optimizer="adam", steps=3, image_size=4)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["name"] == "SimpleCNN" and d["optimizer"] == "adam" and d["dtype"] == "float32"
    assert d["steps"] == 3 and len(d["flax_losses"]) == 3 and d["ok"] is report.ok
    assert {leaf["path"] for leaf in d["final"]} == {"conv/bias", "conv/kernel"}
    assert d["max_rel"] == max(d["max_rel_per_step"]) and d["moved"] > 0
    assert "SimpleCNN adam [float32]" in str(report)


def test_argument_errors():
    with pytest.raises(ValueError, match="no parameters"):
        check_trajectory("SimpleAdder", steps=2)
    with pytest.raises(ValueError, match="float32 or float64"):
        check_trajectory("MLP", steps=2, dtype=np.float16)
    with pytest.raises(ValueError, match="at least one batch"):
        trajectory.run_trajectory(None, None, "sgd", [])


def _labelled_run(name, loss, dtype, *, steps=30, ignore=None, image_size=6):
    """A run of example ``name`` against integer class labels (classes: the output's dim 1)."""
    from funcmod.articles.catalog import get_example
    from funcmod.precision import x64_for

    ex = get_example(name)
    torch.manual_seed(0)
    twin = ex.torch_module(dtype)
    rng = np.random.default_rng(0)
    inputs = [ex.make_inputs(rng, 4, dtype, image_size) for _ in range(steps)]
    with torch.no_grad():
        out_shape = tuple(twin(*(torch.from_numpy(a) for a in inputs[0])).shape)
    label_shape = (out_shape[0], *out_shape[2:])
    batches = []
    for xs in inputs:
        labels = rng.integers(0, out_shape[1], size=label_shape).astype(np.int32)
        if ignore is not None:
            labels[0] = ignore
        batches.append((xs, labels))
    with x64_for(dtype):
        return trajectory.run_trajectory(
            twin,
            ex.flax_module(param_dtype=dtype),
            "adam",
            batches,
            input_layouts=ex.input_layouts,
            output_layout=ex.output_layout,
            loss=loss,
        )


_SLOW = pytest.mark.slow
CE_CASES = [
    pytest.param("MLP", "cross_entropy", None, np.float32, id="mlp-float32", marks=_SLOW),
    pytest.param("MLP", "cross_entropy", None, np.float64, id="mlp-float64"),
    *(
        pytest.param(
            "MLP",
            trajectory.cross_entropy(ignore_index=1, label_smoothing=0.1),
            1,
            dtype,
            id=f"mlp_ignore_smoothing-{np.dtype(dtype).name}",
        )
        for dtype in DTYPES
    ),
    pytest.param(
        "SimpleCNN",
        trajectory.cross_entropy(label_smoothing=0.2),
        None,
        np.float32,
        id="cnn_smoothing-float32",
    ),
    pytest.param(
        "SimpleCNN",
        trajectory.cross_entropy(label_smoothing=0.2),
        None,
        np.float64,
        id="cnn_smoothing-float64",
        marks=_SLOW,
    ),
]


@pytest.mark.parametrize(("name", "loss", "ignore", "dtype"), CE_CASES)
def test_cross_entropy_runs_stay_in_step(name, loss, ignore, dtype):
    """Integer labels; the CNN's classes are torch's dim 1 and the port's last axis."""
    report = _labelled_run(name, loss, dtype, ignore=ignore)
    assert report.ok, str(report)
    assert report.loss.max_rel <= report.rtol and report.moved > 1e-3


def test_a_loss_pair_and_label_smoothing_count():
    """A (torch, JAX) pair is used as given; a JAX loss that differs from torch's is caught."""
    torch_ce, jax_ce = trajectory.cross_entropy()
    smoothed = trajectory.cross_entropy(label_smoothing=0.3)[1]
    report = _labelled_run("MLP", (torch_ce, smoothed), np.float64, steps=5)
    assert not report.ok and report.loss.max_rel > 1e-3
    assert _labelled_run("MLP", (torch_ce, jax_ce), np.float64, steps=5).ok


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        _labelled_run("MLP", "hinge", np.float32, steps=1)
    with pytest.raises(ValueError, match="pair of callables"):
        _labelled_run("MLP", (1, 2), np.float32, steps=1)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        trajectory.cross_entropy(label_smoothing=1.5)


def _radam(module):
    return torch.optim.RAdam(module.parameters(), lr=1e-2, weight_decay=1e-2)


def _rmsprop_centered(module):
    return torch.optim.RMSprop(module.parameters(), lr=1e-3, momentum=0.5, centered=True)


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        pytest.param(_radam, np.float64, id="radam-float64"),
        pytest.param(_rmsprop_centered, np.float32, id="rmsprop-float32"),
        pytest.param(_radam, np.float32, id="radam-float32", marks=pytest.mark.slow),
        pytest.param(_rmsprop_centered, np.float64, id="rmsprop-float64", marks=pytest.mark.slow),
    ],
)
def test_cnn_with_the_other_optimizers(make, dtype):
    """A small CNN through the whole train step, 50 steps, at the optimizer-grid tolerance."""
    rtol = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}[np.dtype(dtype)]
    report = check_trajectory(
        "SimpleCNN", optimizer=make, steps=50, dtype=dtype, image_size=6, rtol=rtol
    )
    assert report.ok, str(report)
