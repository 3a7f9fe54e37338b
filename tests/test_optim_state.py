"""funcmod.optim state both ways: N steps in torch, the state carried to optax, M steps in JAX
make N + M steps in torch; and the reverse (N in JAX, ``to_torch_state``, M in torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from funcmod.articles import torch_models  # noqa: E402
from funcmod.convert import flax_to_torch, torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.optim import TorchOptState, from_torch, to_torch_state  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402
from tests.helpers import x64  # noqa: E402

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
N, M = 8, 8


def _groups_adam_frozen(m):
    m.linear1.bias.requires_grad_(False)
    return torch.optim.Adam(
        [{"params": m.linear1.parameters(), "amsgrad": True}, {"params": m.linear2.parameters()}],
        lr=1e-2,
        weight_decay=1e-2,
    )


CASES = {
    "sgd_dampening": lambda m: torch.optim.SGD(
        m.parameters(), lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2
    ),
    "adam_groups_frozen": _groups_adam_frozen,
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, centered=True, momentum=0.5),
    "adagrad": lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1, lr_decay=0.01),
    "adamax": lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2),
    "nadam": lambda m: torch.optim.NAdam(m.parameters(), lr=1e-2),
    "radam": lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2),
    "adadelta": lambda m: torch.optim.Adadelta(m.parameters()),
}


def _module(dtype):
    torch.manual_seed(0)
    return torch_models.MLP(10, 5, 2).to(TORCH_DTYPES[np.dtype(dtype)])


def _grads(module, dtype, steps):
    rng = np.random.default_rng(1)
    shapes = [tuple(p.shape) for p in module.parameters()]
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def _set_grads(module, grads):
    for p, g in zip(module.parameters(), grads, strict=True):
        p.grad = torch.from_numpy(g.copy()) if p.requires_grad else None


def _torch_steps(module, opt, grads):
    for g in grads:
        _set_grads(module, g)
        opt.step()


def _jax_steps(module, tx, params, state, grads):
    update = jax.jit(tx.update)
    for g in grads:
        _set_grads(module, g)
        flax_grads = jax.tree.map(np.array, torch_grads_to_flax(module)["params"])
        updates, state = update(flax_grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


# float64 for every optimizer (the exact check), float32 for three
GRID = [(c, np.float64) for c in sorted(CASES)] + [
    (c, np.float32) for c in ("adam_groups_frozen", "nadam", "rmsprop")
]


@pytest.mark.parametrize(("case", "dtype"), GRID, ids=[f"{c}-{d.__name__}" for c, d in GRID])
def test_state_carries_over_both_ways(case, dtype):
    with x64(dtype):
        make = CASES[case]
        ref = _module(dtype)
        grads = _grads(ref, dtype, N + M)
        ref_opt = make(ref)
        _torch_steps(ref, ref_opt, grads)
        want = torch_to_flax(ref)["params"]

        # torch -> optax: N steps in torch, M in JAX
        module = _module(dtype)
        opt = make(module)
        _torch_steps(module, opt, grads[:N])
        tx = from_torch(opt, module)
        params = torch_to_flax(module)["params"]
        state = tx.init(params)
        params, _ = _jax_steps(module, tx, params, state, grads[N:])
        assert_trees_close(params, want, rtol=RTOL[np.dtype(dtype)], what=f"{case} torch->jax")

        # optax -> torch: N steps in JAX, M in torch
        module = _module(dtype)
        opt = make(module)
        tx = from_torch(opt, module)
        params = torch_to_flax(module)["params"]
        params, state = _jax_steps(module, tx, params, tx.init(params), grads[:N])
        flax_to_torch({"params": params}, module)
        to_torch_state(state, opt, module)
        _torch_steps(module, opt, grads[N:])
        got = torch_to_flax(module)["params"]
        assert_trees_close(got, want, rtol=RTOL[np.dtype(dtype)], what=f"{case} jax->torch")


def test_carried_state_is_torch_state_in_flax_layout():
    module = _module(np.float32)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    _torch_steps(module, opt, _grads(module, np.float32, 3))
    state = from_torch(opt, module).init(torch_to_flax(module)["params"])
    assert isinstance(state, TorchOptState) and int(state.count) == 3
    kernel = state.slots["exp_avg"]["linear1"]["kernel"]  # (in, out): torch's (out, in).T
    want = opt.state[module.linear1.weight]["exp_avg"].numpy().T
    np.testing.assert_array_equal(np.asarray(kernel), want)


def test_to_torch_state_refuses_a_foreign_state():
    module = _module(np.float32)
    opt = torch.optim.Adam(module.parameters())
    with pytest.raises(ValueError, match=r"no funcmod\.optim state"):
        to_torch_state(optax.adam(1e-3).init(torch_to_flax(module)["params"]), opt, module)
    assert not opt.state
