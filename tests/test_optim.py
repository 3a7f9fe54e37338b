"""funcmod.optim: from_torch's transformations make torch's updates, fed the same gradients.

Each case gives the torch optimizer and the optax transformation the same random gradients
for a number of steps (no model in between, so only the update rules are compared) and
compares the parameters, in float32 and float64.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from funcmod.articles import torch_models  # noqa: E402
from funcmod.convert import torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.optim import clip_grad_norm, from_torch, torch_adam  # noqa: E402
from funcmod.tree import assert_trees_close, compare_trees  # noqa: E402
from tests.helpers import jitted_update, x64  # noqa: E402

DTYPES = [np.float32, np.float64]
TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
# 200 updates from the same gradients: the two sides differ by rounding alone (XLA fuses
# multiply-adds, torch does not), a few ulps per step (the table: python -m tests.test_optim 200).
UPDATE_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-14}
STEPS = 200


def _two_groups_sgd(m):
    return torch.optim.SGD(
        [
            {"params": m.linear1.parameters(), "lr": 0.1, "weight_decay": 0.01},
            {"params": m.linear2.parameters()},
        ],
        lr=0.02,
        momentum=0.9,
    )


def _two_groups_adamw(m):
    return torch.optim.AdamW(
        [
            {"params": m.linear1.parameters(), "weight_decay": 0.0},
            {"params": m.linear2.parameters(), "lr": 1e-3, "betas": (0.5, 0.9)},
        ],
        lr=1e-2,
    )


def _groups_rmsprop_frozen(m):
    m.linear2.bias.requires_grad_(False)
    return torch.optim.RMSprop(
        [
            {"params": m.linear1.parameters(), "lr": 1e-2, "momentum": 0.5},
            {"params": m.linear2.parameters(), "centered": True},
        ],
        lr=1e-3,
    )


def _frozen_bias(m):
    m.linear1.bias.requires_grad_(False)
    return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


CASES = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "sgd_dampening_wd": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.05, momentum=0.9, dampening=0.5, weight_decay=1e-2
    ),
    "sgd_dampening_no_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, dampening=0.5),
    "sgd_tensor_lr": lambda m: torch.optim.SGD(m.parameters(), lr=torch.tensor(0.05), momentum=0.5),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adam_wd": lambda m: torch.optim.Adam(
        m.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2
    ),
    "adam_amsgrad": lambda m: torch.optim.Adam(
        m.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-3
    ),
    "adam_beta1_zero": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.0, 0.999)),
    "adam_decoupled": lambda m: torch.optim.Adam(
        m.parameters(), lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True
    ),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
    "adamw_amsgrad": lambda m: torch.optim.AdamW(
        m.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True
    ),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "rmsprop_centered_momentum": lambda m: torch.optim.RMSprop(
        m.parameters(), lr=1e-3, alpha=0.9, eps=1e-6, centered=True, momentum=0.9
    ),
    "adagrad": lambda m: torch.optim.Adagrad(
        m.parameters(), lr=0.1, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1
    ),
    "adamax": lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "nadam": lambda m: torch.optim.NAdam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "nadam_decoupled": lambda m: torch.optim.NAdam(
        m.parameters(), lr=1e-2, weight_decay=0.1, momentum_decay=1e-2, decoupled_weight_decay=True
    ),
    "radam": lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "radam_decoupled": lambda m: torch.optim.RAdam(
        m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True
    ),
    "adadelta": lambda m: torch.optim.Adadelta(m.parameters(), rho=0.8, weight_decay=1e-2),
    "groups_rmsprop_frozen": _groups_rmsprop_frozen,
    "groups_sgd": _two_groups_sgd,
    "groups_adamw": _two_groups_adamw,
    "only_linear2": lambda m: torch.optim.SGD(m.linear2.parameters(), lr=0.1, momentum=0.9),
    "requires_grad_false": _frozen_bias,
}


def run_same_grads(make_optimizer, dtype, *, steps=STEPS, max_grad_norm=None, grad_scale=1.0):
    """Step a torch MLP twin and its from_torch transformation with the same gradients.

    Returns (flax params, torch params in Flax layout).
    """
    torch.manual_seed(0)
    module = torch_models.MLP(10, 5, 2).to(TORCH_DTYPES[np.dtype(dtype)])
    optimizer = make_optimizer(module)
    tx = from_torch(optimizer, module, max_grad_norm=max_grad_norm)
    params = torch_to_flax(module)["params"]
    opt_state = tx.init(params)
    step = jitted_update(tx)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        for p in module.parameters():
            g = rng.standard_normal(tuple(p.shape)).astype(dtype) * grad_scale
            p.grad = torch.from_numpy(g) if p.requires_grad else None
        # zeros where torch has no gradient; copied, because the arrays can share memory
        # with p.grad, which clip_grad_norm_ scales in place
        grads = jax.tree.map(np.array, torch_grads_to_flax(module)["params"])
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
        optimizer.step()
        params, opt_state = step(grads, opt_state, params)
    return params, torch_to_flax(module)["params"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_updates_match_torch(case, dtype):
    with x64(dtype):
        flax_params, torch_params = run_same_grads(CASES[case], dtype)
        assert_trees_close(
            flax_params, torch_params, rtol=UPDATE_RTOL[np.dtype(dtype)], what=f"{case} params"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["sgd_momentum", "adamw"])
@pytest.mark.parametrize("max_norm", [1.0, 100.0])  # clipping every step / never
def test_updates_with_clipping_match_torch(case, dtype, max_norm):
    with x64(dtype):
        flax_params, torch_params = run_same_grads(CASES[case], dtype, max_grad_norm=max_norm)
        assert_trees_close(
            flax_params, torch_params, rtol=UPDATE_RTOL[np.dtype(dtype)], what=f"{case} params"
        )


def test_parameters_torch_never_updates_stay_put():
    torch.manual_seed(0)
    module = torch_models.MLP(10, 5, 2)
    before = torch_to_flax(module)["params"]
    flax_params, _ = run_same_grads(CASES["only_linear2"], np.float32)
    assert_trees_close(flax_params["linear1"], before["linear1"], rtol=0.0, what="linear1")
    flax_params, _ = run_same_grads(_frozen_bias, np.float32)
    assert_trees_close(flax_params["linear1"]["bias"], before["linear1"]["bias"], rtol=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_over_max", [0.5, 1.0, 3.0])
def test_clip_grad_norm_matches_torch(dtype, norm_over_max):
    """At norm == max_norm torch still scales by max_norm / (max_norm + 1e-6)."""
    with x64(dtype):
        rng = np.random.default_rng(0)
        grads = {
            "a": rng.standard_normal((4, 3)).astype(dtype),
            "b": rng.standard_normal((3,)).astype(dtype),
        }
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        max_norm = float(norm / norm_over_max)
        tensors = [
            torch.nn.Parameter(torch.zeros(g.shape, dtype=TORCH_DTYPES[np.dtype(dtype)]))
            for g in grads.values()
        ]
        for t, g in zip(tensors, grads.values(), strict=True):
            t.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tensors, max_norm)
        want = {k: t.grad.numpy() for k, t in zip(grads, tensors, strict=True)}
        tx = clip_grad_norm(max_norm)
        got, _ = jax.jit(tx.update)(grads, tx.init(grads))
        assert_trees_close(got, want, rtol=UPDATE_RTOL[np.dtype(dtype)], what="clipped")
        unchanged = all(d.ok for d in compare_trees(got, grads, rtol=0.0))
        assert unchanged == (norm_over_max < 1.0)


def test_clip_grad_norm_rejects_nonpositive_max_norm():
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(0.0)


def test_torch_adam_needs_params_for_weight_decay():
    tx = torch_adam(1e-3, weight_decay=0.1)
    params = {"w": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


def test_one_group_needs_no_module():
    module = torch_models.MLP(10, 5, 2)
    tx = from_torch(torch.optim.SGD(module.parameters(), lr=0.1))
    params = torch_to_flax(module)["params"]
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert_trees_close(updates, jax.tree.map(lambda g: -0.1 * g, grads), rtol=0.0)


def _mlp():
    return torch_models.MLP(10, 5, 2)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda m: torch.optim.SGD(m.parameters(), lr=0.1, maximize=True),
            NotImplementedError,
            "maximize",
        ),
        (
            lambda m: torch.optim.Adam(m.parameters(), differentiable=True),
            NotImplementedError,
            "differentiable",
        ),
        (lambda m: torch.optim.Rprop(m.parameters()), NotImplementedError, "Rprop"),
        (lambda m: torch.optim.LBFGS(m.parameters()), NotImplementedError, "LBFGS"),
        (lambda m: torch.optim.ASGD(m.parameters()), NotImplementedError, "ASGD"),
        (
            lambda m: torch.optim.SparseAdam(list(m.parameters())),
            NotImplementedError,
            "SparseAdam",
        ),
        (
            lambda m: torch.optim.RMSprop(m.parameters(), maximize=True),
            NotImplementedError,
            "RMSprop param group 0: maximize",
        ),
        (
            lambda m: (
                torch.optim.lr_scheduler.StepLR(
                    torch.optim.SGD(m.parameters(), lr=0.1), 5
                ).optimizer
            ),
            NotImplementedError,
            "scheduler",
        ),
    ],
    ids=[
        "maximize",
        "differentiable",
        "rprop",
        "lbfgs",
        "asgd",
        "sparse_adam",
        "rmsprop_max",
        "scheduler",
    ],
)
def test_settings_that_cannot_be_reproduced_raise(make, error, match):
    module = _mlp()
    with pytest.raises(error, match=match):
        from_torch(make(module), module)


def test_unknown_group_setting_raises():
    module = _mlp()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    opt.param_groups[0]["swa_lr"] = 0.05
    with pytest.raises(NotImplementedError, match="swa_lr"):
        from_torch(opt, module)


def test_a_stepped_optimizer_needs_the_module():
    module = _mlp()
    opt = torch.optim.Adam(module.parameters())
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(ValueError, match="state from steps already taken; pass the torch module"):
        from_torch(opt)


def test_a_fresh_adagrad_is_not_a_stepped_one():
    """Adagrad creates its state (step 0, the accumulators) in __init__."""
    module = _mlp()
    tx = from_torch(torch.optim.Adagrad(module.parameters(), lr=0.1))
    params = torch_to_flax(module)["params"]
    assert int(tx.init(params).count) == 0


def test_several_groups_need_the_module():
    module = _mlp()
    with pytest.raises(ValueError, match="2 param groups"):
        from_torch(_two_groups_sgd(module))
    module = _mlp()
    with pytest.raises(ValueError, match="requires_grad=False"):
        from_torch(_frozen_bias(module))


def test_parameters_of_another_module_raise():
    module, other = _mlp(), torch_models.SimpleLinear(3, 4)
    opt = torch.optim.SGD([*module.parameters(), *other.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"not parameters of MLP.*\(4, 3\)"):
        from_torch(opt, module)


if __name__ == "__main__":
    # The error table: python -m tests.test_optim [steps]
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else STEPS
    print(f"max relative parameter error after {n} steps (same gradients)")
    for case in sorted(CASES):
        row = []
        for dtype in DTYPES:
            with x64(dtype):
                got, want = run_same_grads(CASES[case], dtype, steps=n)
                row.append(max(d.max_rel for d in compare_trees(got, want, rtol=0.0)))
        print(f"{case:28} float32 {row[0]:.1e}  float64 {row[1]:.1e}")
