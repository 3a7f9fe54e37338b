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
        trajectory, "from_torch", lambda opt, module, max_grad_norm=None: optax.sgd(0.01001, 0.9)
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
