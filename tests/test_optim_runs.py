"""Whole training runs with every torch.optim class funcmod translates and every lr scheduler:
200 steps of a small MLP and of a small CNN, trained in torch and, through
``funcmod.optim.from_torch``, in JAX (``funcmod.trajectory.run_trajectory``), each side computing
its own gradients. The grid has two param groups and a frozen parameter.

Float64 holds the parameters to 1e-12 over the whole run. Float32 is held to 2e-5, the bound of
the same-gradient runs (tests/test_optim.py, tests/test_schedules.py): here each side's rounding
also enters its own gradients, and 200 steps carry it along; the MLP and CNN use ``Tanh``, as a
ReLU kink reached by one side and not the other is a different, documented effect
(docs/pitfalls.md, tests/test_relu_kinks.py).

The figures: ``python -m tests.test_optim_runs``.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from flax import linen as fnn  # noqa: E402

from funcmod import nn as tnn  # noqa: E402
from funcmod.trajectory import run_trajectory  # noqa: E402
from tests.helpers import x64  # noqa: E402

S = torch.optim.lr_scheduler
O = torch.optim
STEPS = 200
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _mlp():
    torch.manual_seed(0)
    twin = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    port = fnn.Sequential([tnn.Linear(6, 12), tnn.Tanh(), tnn.Linear(12, 3)])
    return twin, port, (6,)


def _cnn():
    torch.manual_seed(0)
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 3),
    )
    port = fnn.Sequential(
        [tnn.Conv2d(2, 4, 3, padding=1), tnn.Tanh(), tnn.Flatten(), tnn.Linear(4 * 5 * 5, 3)]
    )
    return twin, port, (2, 5, 5)


MODELS = {"mlp": _mlp, "cnn": _cnn}


def _groups(m, first: dict, rest: dict | None = None) -> list[dict]:
    """Two param groups: the first layer's parameters, then the others."""
    layers = [c for c in m if any(True for _ in c.parameters())]
    return [
        {"params": list(layers[0].parameters()), **first},
        {"params": [p for c in layers[1:] for p in c.parameters()], **(rest or {})},
    ]


def _frozen_last_bias(m) -> list:
    m[-1].bias.requires_grad_(False)
    return list(m.parameters())


def _adamw_groups_frozen(m):
    _frozen_last_bias(m)
    return O.AdamW(_groups(m, {"weight_decay": 0.0}, {"betas": (0.8, 0.99)}), lr=3e-3)


# name -> torch optimizer factory: every class from_torch translates, one setting each, with
# param groups and a frozen parameter spread over the grid
OPTIMIZERS = {
    "sgd_nesterov_groups": lambda m: O.SGD(
        _groups(m, {"lr": 0.05, "weight_decay": 1e-2}), lr=0.02, momentum=0.9, nesterov=True
    ),
    "adam_amsgrad": lambda m: O.Adam(m.parameters(), lr=3e-3, amsgrad=True, weight_decay=1e-3),
    "adamw_groups_frozen": _adamw_groups_frozen,
    "rmsprop_centered_frozen": lambda m: O.RMSprop(
        _frozen_last_bias(m), lr=1e-3, centered=True, momentum=0.5, weight_decay=1e-2
    ),
    "adagrad": lambda m: O.Adagrad(
        m.parameters(), lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1, weight_decay=1e-3
    ),
    "adamax_groups": lambda m: O.Adamax(_groups(m, {"lr": 5e-3}), lr=2e-3),
    "nadam_decoupled": lambda m: O.NAdam(
        m.parameters(), lr=3e-3, weight_decay=1e-2, decoupled_weight_decay=True
    ),
    "radam": lambda m: O.RAdam(m.parameters(), lr=3e-3, weight_decay=1e-3),
    "adadelta": lambda m: O.Adadelta(m.parameters(), lr=0.5, rho=0.9, weight_decay=1e-3),
}


def _sgd(m):
    return O.SGD(m.parameters(), lr=0.02, momentum=0.9)


def _adam(m):
    return O.Adam(m.parameters(), lr=3e-3)


def _sgd_groups(m):
    return O.SGD(_groups(m, {"lr": 0.04}), lr=0.01, momentum=0.5)


# name -> (optimizer factory, scheduler factory, scheduler_every): every scheduler class
SCHEDULERS = {
    "step": (_sgd, lambda o: S.StepLR(o, 30, gamma=0.5), 1),
    "step_per_epoch": (_adam, lambda o: S.StepLR(o, 4, gamma=0.5), 10),
    "multistep": (_sgd_groups, lambda o: S.MultiStepLR(o, [50, 120, 121], gamma=0.3), 1),
    "exponential": (_adam, lambda o: S.ExponentialLR(o, 0.99), 1),
    "cosine": (_sgd, lambda o: S.CosineAnnealingLR(o, 80, eta_min=1e-3), 1),
    "cosine_restarts": (_adam, lambda o: S.CosineAnnealingWarmRestarts(o, 20, 2, 1e-4), 1),
    "linear": (_sgd, lambda o: S.LinearLR(o, 0.1, 1.0, 50), 1),
    "constant": (_adam, lambda o: S.ConstantLR(o, 0.25, 40), 1),
    "polynomial": (_sgd, lambda o: S.PolynomialLR(o, 150, 2.0), 1),
    "onecycle_cos_sgd": (_sgd, lambda o: S.OneCycleLR(o, 0.05, total_steps=STEPS), 1),
    "onecycle_linear_adam": (
        _adam,
        lambda o: S.OneCycleLR(o, 5e-3, total_steps=STEPS, anneal_strategy="linear"),
        1,
    ),
    "cyclic_triangular2_groups": (
        _sgd_groups,
        lambda o: S.CyclicLR(o, [0.002, 0.001], [0.03, 0.02], step_size_up=20, mode="triangular2"),
        1,
    ),
    "sequential": (
        _adam,
        lambda o: S.SequentialLR(
            o, [S.LinearLR(o, 0.1, total_iters=30), S.CosineAnnealingLR(o, 170)], milestones=[30]
        ),
        1,
    ),
    "chained": (
        _sgd,
        lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.995), S.StepLR(o, 50, 0.5)]),
        1,
    ),
    "lambda_groups": (
        _sgd_groups,
        lambda o: S.LambdaLR(o, [lambda e: 1 / (1 + 0.1 * e), lambda e: 0.5 + 0.5 * math.cos(e)]),
        5,
    ),
    "multiplicative": (_sgd, lambda o: S.MultiplicativeLR(o, lambda e: 0.99), 1),
}


def _batches(shape: tuple[int, ...], dtype) -> list:
    rng = np.random.default_rng(1)
    return [
        (
            [rng.standard_normal((8, *shape)).astype(dtype)],
            rng.standard_normal((8, 3)).astype(dtype),
        )
        for _ in range(STEPS)
    ]


def run(model: str, case: str, dtype, twin=None):
    """``case`` trained for STEPS steps on both sides; ``twin`` (default: a fresh one) is
    trained in place."""
    fresh, port, shape = MODELS[model]()
    twin = (fresh if twin is None else twin).to(TORCH_DTYPES[np.dtype(dtype)])
    port = fnn.Sequential([_in_dtype(layer, dtype) for layer in port.layers])
    if case in OPTIMIZERS:
        kw = {"optimizer": OPTIMIZERS[case]}
    else:
        make_opt, make_sched, every = SCHEDULERS[case]
        kw = {"optimizer": make_opt, "scheduler": make_sched, "scheduler_every": every}
    return run_trajectory(
        twin, port, batches=_batches(shape, dtype), rtol=RTOL[np.dtype(dtype)], name=case, **kw
    )


def _in_dtype(layer, dtype):
    return layer.clone(param_dtype=dtype) if hasattr(layer, "param_dtype") else layer


CASES = [*OPTIMIZERS, *SCHEDULERS]
# Each run compiles its own train step (about a second), so the suite runs every case on the MLP
# in float64 and, marked slow, every optimizer on the CNN in float64 and on the MLP in float32,
# with one scheduler each (OneCycleLR, which also cycles momentum); the whole grid, both models
# and both dtypes, is the table of the __main__ run below.
RUNS = [
    pytest.param(model, case, dtype, id=f"{model}-{case}-{np.dtype(dtype).name}", marks=marks)
    for case in CASES
    for model, dtype, marks in (
        ("mlp", np.float64, ()),
        ("cnn", np.float64, (pytest.mark.slow,)),
        ("mlp", np.float32, (pytest.mark.slow,)),
    )
    if (model, dtype) == ("mlp", np.float64) or case in (*OPTIMIZERS, "onecycle_cos_sgd")
]


@pytest.mark.parametrize(("model", "case", "dtype"), RUNS)
def test_200_steps_follow_torch(model, case, dtype):
    with x64(dtype):
        report = run(model, case, dtype)
    assert report.ok, str(report)
    assert report.steps == STEPS and report.moved > 1e-3  # the run trained


def test_the_grid_has_groups_and_a_frozen_parameter_that_stays_put():
    twin, _, _ = _cnn()
    opt = OPTIMIZERS["adamw_groups_frozen"](twin)
    assert len(opt.param_groups) == 2 and not twin[-1].bias.requires_grad
    twin, _, _ = _cnn()
    before = twin[-1].bias.detach().double().clone()
    with x64(np.float64):
        report = run("cnn", "adamw_groups_frozen", np.float64, twin=twin)
    assert report.ok, str(report)
    assert not twin[-1].bias.requires_grad and torch.equal(twin[-1].bias.detach(), before)


if __name__ == "__main__":
    # python -m tests.test_optim_runs [case ...]
    import sys

    print(f"max relative parameter error over {STEPS} steps (each side its own gradients)")
    print(f"{'case':<28} {'mlp f32':>9} {'mlp f64':>9} {'cnn f32':>9} {'cnn f64':>9}")
    for case in sys.argv[1:] or CASES:
        row = []
        for model in MODELS:
            for dtype in (np.float32, np.float64):
                with x64(dtype):
                    row.append(max(run(model, case, dtype).max_rel_per_step))
        print(f"{case:<28} " + " ".join(f"{e:9.1e}" for e in row))
