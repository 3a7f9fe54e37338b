"""funcmod.optim's lr schedulers: the lr of every step is torch's, and whole runs with a
scheduler make torch's updates (same gradients on both sides, as in tests/test_optim.py)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from funcmod.articles import torch_models  # noqa: E402
from funcmod.convert import torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.optim import from_torch, schedule_from_torch  # noqa: E402
from funcmod.optim.schedules import attached_schedulers  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402
from tests.helpers import jitted_update, x64  # noqa: E402

S = torch.optim.lr_scheduler
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
UPDATE_RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
STEPS = 200


def _sgd(m, **kw):
    return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, **kw)


def _adam(m):
    return torch.optim.Adam(m.parameters(), lr=1e-2)


def _two_groups(m):
    return torch.optim.SGD(
        [{"params": m.linear1.parameters(), "lr": 0.2}, {"params": m.linear2.parameters()}],
        lr=0.05,
        momentum=0.5,
    )


# name -> (optimizer factory, scheduler factory, scheduler_every)
SCHEDULERS = {
    "step": (_sgd, lambda o: S.StepLR(o, 7, gamma=0.5), 1),
    "step_per_epoch": (_adam, lambda o: S.StepLR(o, 2, gamma=0.3), 5),
    "multistep": (_sgd, lambda o: S.MultiStepLR(o, [5, 20, 21], gamma=0.2), 1),
    "exponential": (_adam, lambda o: S.ExponentialLR(o, 0.95), 1),
    "cosine": (_sgd, lambda o: S.CosineAnnealingLR(o, 25, eta_min=1e-3), 1),
    "cosine_restarts": (_adam, lambda o: S.CosineAnnealingWarmRestarts(o, 5, 2, 1e-4), 1),
    "linear": (_sgd, lambda o: S.LinearLR(o, 0.1, 1.0, 15), 1),
    "constant": (_adam, lambda o: S.ConstantLR(o, 0.25, 10), 1),
    "polynomial": (_sgd, lambda o: S.PolynomialLR(o, 40, 2.0), 1),
    "onecycle_cos_sgd": (_sgd, lambda o: S.OneCycleLR(o, 0.5, total_steps=STEPS), 1),
    "onecycle_linear_adam": (
        _adam,
        lambda o: S.OneCycleLR(o, 0.02, total_steps=STEPS, anneal_strategy="linear"),
        1,
    ),
    "onecycle_three_phase": (
        _two_groups,
        lambda o: S.OneCycleLR(o, [0.3, 0.1], total_steps=STEPS, three_phase=True),
        1,
    ),
    "cyclic_triangular2": (
        _sgd,
        lambda o: S.CyclicLR(o, 0.01, 0.2, step_size_up=6, mode="triangular2"),
        1,
    ),
    "cyclic_exp_range": (
        _sgd,
        lambda o: S.CyclicLR(
            o, 0.01, 0.1, step_size_up=4, step_size_down=9, mode="exp_range", gamma=0.97
        ),
        1,
    ),
    "sequential": (
        _adam,
        lambda o: S.SequentialLR(
            o, [S.LinearLR(o, 0.1, total_iters=10), S.CosineAnnealingLR(o, 30)], milestones=[10]
        ),
        1,
    ),
    "chained": (
        _sgd,
        lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.97), S.StepLR(o, 10, 0.5)]),
        1,
    ),
    "lambda_groups": (_two_groups, lambda o: S.LambdaLR(o, [lambda e: 1 / (1 + e), math.cos]), 3),
    "multiplicative": (_sgd, lambda o: S.MultiplicativeLR(o, lambda e: 0.9 + 0.001 * e), 1),
}


def _module(dtype=np.float32, seed=0):
    torch.manual_seed(seed)
    return torch_models.MLP(10, 5, 2).to(TORCH_DTYPES[np.dtype(dtype)])


def _torch_lrs(make_opt, make_sched, every, steps):
    """(steps, n_groups): the lr each optimizer step uses in the usual torch loop."""
    opt = make_opt(_module())
    sched = make_sched(opt)
    out = []
    for i in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if (i + 1) % every == 0:
            sched.step()
    return np.array(out, np.float64)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedule_is_torch_lr_value_by_value(name):
    """Exactly equal in float64: the schedule is torch's own sequence of floats (recorded from a
    copy of the scheduler), recursive forms included."""
    make_opt, make_sched, every = SCHEDULERS[name]
    want = _torch_lrs(make_opt, make_sched, every, STEPS)
    opt = make_opt(_module())
    sched = make_sched(opt)
    before = [g["lr"] for g in opt.param_groups]
    schedules = schedule_from_torch(sched, every, steps=STEPS)
    schedules = schedules if isinstance(schedules, list) else [schedules]
    with x64(np.float64):
        got = np.stack([np.asarray(s(np.arange(STEPS))) for s in schedules], axis=1)
        assert np.isnan(float(schedules[0](STEPS + every)))  # past the run: NaN, not silence
    np.testing.assert_array_equal(got, want)
    assert [g["lr"] for g in opt.param_groups] == before  # the scheduler was not stepped
    assert getattr(sched, "last_epoch", 0) == 0


def run_with_scheduler(make_opt, make_sched, every, dtype, steps=STEPS):
    module = _module(dtype)
    opt = make_opt(module)
    sched = make_sched(opt)
    tx = from_torch(opt, module, scheduler=sched, scheduler_every=every, steps=steps)
    params = torch_to_flax(module)["params"]
    state = tx.init(params)
    step = jitted_update(tx)
    rng = np.random.default_rng(0)
    for i in range(steps):
        for p in module.parameters():
            p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(dtype))
        grads = jax.tree.map(np.array, torch_grads_to_flax(module)["params"])
        opt.step()
        if (i + 1) % every == 0:
            sched.step()
        params, state = step(grads, state, params)
    return params, torch_to_flax(module)["params"]


TRAJECTORY_CASES = [
    "step_per_epoch",
    "cosine_restarts",
    "onecycle_cos_sgd",
    "onecycle_linear_adam",
    "cyclic_exp_range",
    "sequential",
    "chained",
    "lambda_groups",
]


# float64 for every case; float32 for two (the rest marked slow)
FAST_FLOAT32 = {"onecycle_linear_adam", "lambda_groups"}
RUNS = [
    pytest.param(name, dtype, id=f"{name}-{np.dtype(dtype).name}", marks=marks)
    for name in TRAJECTORY_CASES
    for dtype, marks in (
        (np.float64, ()),
        (np.float32, () if name in FAST_FLOAT32 else (pytest.mark.slow,)),
    )
]


@pytest.mark.parametrize(("name", "dtype"), RUNS)
def test_runs_with_scheduler_match_torch(name, dtype):
    """OneCycleLR with SGD and Adam also cycles momentum / beta1."""
    with x64(dtype):
        got, want = run_with_scheduler(*SCHEDULERS[name], dtype)
        assert_trees_close(got, want, rtol=UPDATE_RTOL[np.dtype(dtype)], what=name)


def test_a_scheduler_attached_but_not_passed_is_refused():
    module = _module()
    opt = _sgd(module)
    sched = S.StepLR(opt, 5)
    with pytest.raises(NotImplementedError, match="StepLR"):
        from_torch(opt, module)
    del sched
    module = _module()
    opt = _sgd(module)
    plateau = S.ReduceLROnPlateau(opt)  # leaves no mark in the optimizer
    with pytest.raises(NotImplementedError, match="ReduceLROnPlateau"):
        from_torch(opt, module)
    with pytest.raises(NotImplementedError, match="ReduceLROnPlateau changes the lr from"):
        from_torch(opt, module, scheduler=plateau)


def test_attached_schedulers_finds_them_besides_the_passed_ones_and_not_dead_ones():
    opt = _sgd(_module())
    sched = S.StepLR(opt, 5)
    assert attached_schedulers(opt) == [sched]
    assert attached_schedulers(opt, besides=[sched]) == []
    other = S.ExponentialLR(opt, 0.9)
    assert attached_schedulers(opt, besides=[sched]) == [other]
    # a scheduler in a reference cycle, no longer reachable: the collector's to clear
    cycle = S.ConstantLR(opt, 0.5, 3)
    cycle.me = cycle
    del cycle, other
    assert attached_schedulers(opt, besides=[sched]) == []


def test_refusals_name_what_they_refuse():
    module = _module()
    opt = _sgd(module)
    sched = S.StepLR(opt, 5)
    with pytest.raises(ValueError, match="StepLR has no end of its own: pass steps="):
        from_torch(opt, module, scheduler=sched)
    other = S.StepLR(_sgd(_module()), 5)
    with pytest.raises(ValueError, match="attached to another optimizer"):
        from_torch(opt, module, scheduler=other, steps=10)
    with pytest.raises(ValueError, match="scheduler_every must be >= 1"):
        schedule_from_torch(sched, 0, steps=10)

    class Custom(S.LRScheduler):
        def get_lr(self):
            return self.base_lrs

    module = _module()
    opt = _sgd(module)
    with pytest.raises(NotImplementedError, match="Custom is not translated"):
        from_torch(opt, module, scheduler=Custom(opt), steps=10)


if __name__ == "__main__":
    # The error table: python -m tests.test_schedules
    from funcmod.tree import compare_trees

    print(f"max relative parameter error after {STEPS} steps with a scheduler")
    for name in sorted(SCHEDULERS):
        row = []
        for dtype in (np.float32, np.float64):
            with x64(dtype):
                got, want = run_with_scheduler(*SCHEDULERS[name], dtype)
                row.append(max(d.max_rel for d in compare_trees(got, want, rtol=0.0)))
        print(f"{name:22} float32 {row[0]:.1e}  float64 {row[1]:.1e}")
